"""Datasets held in memory as tensors: built-in digits, 2-D toys and image folders."""

from genlab.data.base import DataSpec, TensorData
from genlab.data.registry import (
    DATASETS,
    dataset_names,
    describe_datasets,
    load_dataset,
)

__all__ = ["DATASETS", "DataSpec", "TensorData", "dataset_names", "describe_datasets", "load_dataset"]
