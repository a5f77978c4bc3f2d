"""Text corpora as training data: a split's token stream, its tokenizer, and the windows a step draws.

`load_text_data(spec, split)` reads the corpus `data.name` names (``pydocs`` or ``text:PATH``, see
genlab/data/text.py), trains the tokenizer `data.tokenizer` on the *train* split (unless one is
given: a run reloads its own from tokenizer.json, never retrains or fetches it), encodes the split
into one stream and serves its overlapping windows of `data.seq_len + 1` tokens by index, so the
step-indexed batches of genlab/data/batches.py draw from it exactly as from images, without
materialising the windows.

Every tokenizer carries the same special tokens (`SPECIALS`: end of text, mask), so a GPT and an
MDLM trained on one corpus with one setting share their ids; a causal model simply never sees the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from genlab.data.base import CorpusInfo, DataInfo, DataSpec, check_split
from genlab.data.text import (
    TEXT_CORPORA,
    TokenWindows,
    encode_documents,
    load_text_corpus,
)
from genlab.data.tokenizer import EOT, MASK, BPETokenizer, CharTokenizer, TextTokenizer
from genlab.errors import DataError, printable

__all__ = ["SPECIALS", "TEXT_PREFIX", "TextData", "is_text_name", "load_text_data", "train_tokenizer"]

TEXT_PREFIX = "text:"
#: the special tokens of every text run's tokenizer, in id order after the characters (char) or first (bpe)
SPECIALS = (EOT, MASK)


def is_text_name(name: str) -> bool:
    """Whether the dataset name `name` is a text corpus (``pydocs``, ``text:PATH``)."""
    return name.startswith(TEXT_PREFIX) or name in TEXT_CORPORA


def train_tokenizer(spec: DataSpec, train_docs) -> TextTokenizer:
    """The tokenizer `spec.tokenizer` trained on the training documents (deterministic)."""
    if spec.tokenizer == "char":
        return CharTokenizer.train(train_docs, specials=SPECIALS)
    return BPETokenizer.train(train_docs, spec.vocab_size, specials=SPECIALS)


@dataclass(frozen=True)
class TextData:
    """One split of a text corpus as training examples: the windows of its token stream, and its tokenizer.

    Example i is window i of `windows`; a batch reads it as inputs x = window[:-1] (seq_len,) and
    next-token targets extras["targets"] = window[1:] (seq_len,).

    Attributes:
        windows: the split's token stream and the window length.
        tokenizer: the run's tokenizer (trained on the train split).
        corpus: the corpus description stored in run.json.
        split: "train" or "test" (the corpus's validation split).
    """

    windows: TokenWindows
    tokenizer: TextTokenizer
    corpus: CorpusInfo
    split: str
    modality: ClassVar[str] = "tokens"

    @property
    def name(self) -> str:
        """The dataset name as the user wrote it."""
        return self.corpus.name

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self.tokenizer.vocab_size

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example's inputs: (seq_len,)."""
        return (self.windows.seq_len,)

    @property
    def num_chars(self) -> int:
        """Characters of this split (bits per character divide by them)."""
        return self.corpus.train_chars if self.split == "train" else self.corpus.val_chars

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.windows)

    def examples(self, index: Tensor) -> tuple[Tensor, None, dict[str, Tensor]]:
        """The windows at `index` (K,): inputs (K, seq_len), no labels, {"targets": (K, seq_len)} shifted by one."""
        w = self.windows.batch(index)  # (K, seq_len + 1)
        return w[:, :-1], None, {"targets": w[:, 1:]}

    def data_info(self) -> DataInfo:
        """The run's description of its data (DataInfo.of calls this)."""
        return DataInfo(self.shape, "tokens", None, 0.0, self.vocab_size, self.corpus.train_sha256[:16], self.corpus)


def load_text_data(spec: DataSpec, split: str = "train", tokenizer: TextTokenizer | None = None) -> TextData:
    """The `split` ("train", or "test" for the corpus's validation split) of the text corpus `spec.name`.

    Args:
        spec: the `data:` section (name, tokenizer, vocab_size, seq_len).
        split: "train" or "test".
        tokenizer: the run's tokenizer; None trains `spec.tokenizer` on the train split.

    Raises:
        DataError: an unreadable, empty or non-UTF-8 corpus, a split too short for one window, or
            validation characters outside a character vocabulary.
    """
    check_split(split)
    corpus = load_text_corpus(spec.name)
    which = "train" if split == "train" else "val"
    if tokenizer is None:
        tokenizer = train_tokenizer(spec, corpus.train)
    try:
        tokens = encode_documents(corpus.split(which), tokenizer.encode_batch, tokenizer.special_id(EOT))
        windows = TokenWindows(tokens, spec.seq_len)
    except DataError as err:
        raise DataError(f"{which} split of {printable(spec.name)}: {err}") from None
    specials = tuple((s, tokenizer.special_id(s)) for s in tokenizer.specials)
    info = CorpusInfo(spec.name, tokenizer.kind, corpus.train_sha256, corpus.val_sha256, corpus.num_chars("train"),
                      corpus.num_chars("val"), specials)
    return TextData(windows, tokenizer, info, split)
