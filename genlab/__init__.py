"""genlab: train, sample, evaluate and compare generative models."""

__version__ = "0.1.0"
