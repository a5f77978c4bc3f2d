"""Captioned images as a text-to-image model trains on them: images, and their captions as token ids.

`CaptionedImages` wraps an image `TensorData` whose examples carry captions (the `shapes` dataset):
the captions are encoded once by the run's caption tokenizer into a (N, L) id table with
`PAD_ID` at padding, and every training batch carries its rows as `extras["caption_ids"]`
(the ids a text-conditioned denoiser takes as its `cond`). It describes itself (`data_info`) as
images whose captions have `vocab_size` ids, so the model can be rebuilt without the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from genlab.data.base import DataInfo, TensorData, content_hash
from genlab.data.shape_captions import CaptionTokenizer
from genlab.errors import DataError
from genlab.nn.cross_attention import PAD_ID

CAPTION_IDS = "caption_ids"
#: the captioned datasets and the tokenizer of their captions
CAPTION_TOKENIZERS = {"shapes": CaptionTokenizer}  # the key of the caption ids in a Batch's extras


class CaptionEncoder(Protocol):
    """What a caption tokenizer offers: `encode(captions, max_len) -> (ids (B, L), mask (B, L) True at real
    tokens)`, its `vocab_size`, and `save(path)` (the run keeps it as tokenizer.json)."""

    vocab_size: int

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]: ...

    def save(self, path) -> None: ...


def caption_ids(tokenizer: CaptionEncoder, captions: Sequence[str], max_len: int) -> Tensor:
    """Captions as the (B, L) int64 ids a text-conditioned denoiser takes: PAD_ID at padding."""
    ids, mask = tokenizer.encode(list(captions), max_len)
    return ids.long().masked_fill(~mask.bool(), PAD_ID)


class CaptionedImages:
    """An image split with its captions encoded: `IndexedExamples` for `StepBatches`, and a `data_info()`.

    Args:
        data: (N, C, H, W) images with `captions` (N strings).
        tokenizer: the run's caption tokenizer.
        max_len: caption length in tokens (the text encoder's context).
    """

    def __init__(self, data: TensorData, tokenizer: CaptionEncoder, max_len: int) -> None:
        captions = getattr(data, "captions", None)
        if data.modality != "image" or not captions:
            raise DataError(f"dataset {data.name} has no captions; a text-to-image model needs captioned images "
                            f"(data.name=shapes)")
        if len(captions) != len(data):
            raise DataError(f"dataset {data.name} has {len(captions)} captions for {len(data)} images")
        self.data, self.tokenizer, self.max_len = data, tokenizer, max_len
        self.captions = tuple(captions)
        self.ids = caption_ids(tokenizer, self.captions, max_len)  # (N, L)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def x(self) -> Tensor:
        """The images, (N, C, H, W)."""
        return self.data.x

    def examples(self, index: Tensor) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Images at `index`, their labels, and their caption ids in extras[CAPTION_IDS] ((K, L) int64)."""
        x, y, extras = self.data.examples(index)
        return x, y, {**extras, CAPTION_IDS: self.ids[index]}

    def data_info(self) -> DataInfo:
        """The images' description, with the caption vocabulary's size (the text encoder's embedding)."""
        d = self.data
        return DataInfo(tuple(d.shape), "image", d.num_classes, float(d.x.float().std()), self.tokenizer.vocab_size,
                        content_hash(d.x, d.y))


def dataset_caption_tokenizer(data: TensorData) -> CaptionEncoder:
    """The caption tokenizer of a captioned dataset (its vocabulary is the dataset's grammar)."""
    if data.name not in CAPTION_TOKENIZERS:
        raise DataError(f"dataset {data.name} has no caption tokenizer; a text-to-image model needs captioned images "
                        f"({', '.join(sorted(CAPTION_TOKENIZERS))})")
    return CAPTION_TOKENIZERS[data.name]()


def batch_caption_ids(extras: dict[str, Tensor]) -> Tensor:
    """The caption ids of a training batch ((B, L) int64); a DataError when the batch has none."""
    if CAPTION_IDS not in extras:
        raise DataError("this batch has no captions; a text-to-image model trains on captioned images")
    return extras[CAPTION_IDS]

