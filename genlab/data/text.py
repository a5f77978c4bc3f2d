"""Text corpora split into train and validation, and the token-window container the trainer draws from.

Corpora (``load_text_corpus(name)``):

- ``text:PATH`` where PATH is
  - one UTF-8 file: the first 90% of its characters train, the last 10% validate
    (``data[:int(n * 0.9)]``, nanoGPT's convention, so published losses compare);
  - a folder: every ``*.txt`` file below it (sorted by path) is a document;
  - a ``.jsonl`` file: one JSON object per line, its ``"text"`` string a document.
  Documents are split with a fixed seed (:data:`SPLIT_SEED`, never the run seed): 10% of
  them (at least one) validate. A folder or JSONL with a single document is split by
  characters like a file.
- ``pydocs``: the English text of Python's documentation topics shipped with the standard
  library (``pydoc_data.topics``), cleaned (:func:`clean_pydocs`), one document per topic,
  split by topic with the same fixed seed. It differs between Python versions, so record its
  hashes.

Each split's content hash (:func:`split_sha256`) identifies it in a run folder. Every problem a
user can cause is a one-line :class:`~genlab.errors.DataError`.

Training examples (:class:`TokenWindows`): a split is encoded into one int64 stream (documents
joined by the end-of-text id) and example ``i`` is the window ``tokens[i : i + seq_len + 1]``
(inputs ``[:-1]``, next-token targets ``[1:]``). The windows are indexed ``0 .. len - 1``, so
``genlab/data/batches.py``'s ``step_indices(len(windows), batch_size, seed, step)`` draws the
windows of step k by index, and resume is exact without loader state.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.errors import DataError, printable, unknown_name_error

__all__ = [
    "SPLIT_SEED",
    "TEXT_CORPORA",
    "VAL_FRACTION",
    "TextCorpus",
    "TokenWindows",
    "clean_pydocs",
    "encode_documents",
    "load_pydocs",
    "load_text_corpus",
    "load_text_path",
    "read_utf8",
    "split_sha256",
]

SPLIT_SEED = 0  # the document split never depends on the run seed: every family and the evaluator agree
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class TextCorpus:
    """A corpus split into train and validation documents.

    Attributes:
        name: as the user wrote it (``"pydocs"``, ``"text:PATH"``).
        train, val: the documents of each split (a single-file corpus has one per split).
        train_sha256, val_sha256: :func:`split_sha256` of each split.
    """

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    train_sha256: str
    val_sha256: str

    def split(self, which: str) -> tuple[str, ...]:
        """The documents of split ``"train"`` or ``"val"``."""
        if which not in ("train", "val"):
            raise ValueError(f'split must be "train" or "val", got {which!r}')
        return self.train if which == "train" else self.val

    def num_chars(self, which: str) -> int:
        """Characters in split ``which`` (what bits per character divide by)."""
        return sum(len(d) for d in self.split(which))


def split_sha256(docs: Sequence[str]) -> str:
    """sha256 (hex) of a split: for each document, its UTF-8 byte length (8 bytes, little-endian), then its bytes.

    The length prefix makes the hash unambiguous: ("ab", "c") and ("a", "bc") differ.
    """
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def read_utf8(path: Path) -> str:
    """The text of ``path``; a leading byte-order mark is dropped. DataError naming the file and byte offset if not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {printable(path)}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{printable(path)} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    return text.removeprefix("\ufeff")


def _split_chars(name: str, text: str) -> TextCorpus:
    """nanoGPT's split: the first 90% of the characters train, the rest validate."""
    n = int(len(text) * (1 - VAL_FRACTION))
    train, val = (text[:n],), (text[n:],)
    if not text[:n] or not text[n:]:
        raise DataError(f'corpus "{printable(name)}" is too short to split ({len(text)} characters)')
    return TextCorpus(name, train, val, split_sha256(train), split_sha256(val))


def _split_documents(name: str, docs: Sequence[str]) -> TextCorpus:
    """A seeded split by document: 10% (at least one) validate; the order inside each split is the input order."""
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f'corpus "{printable(name)}" is empty')
    if len(docs) == 1:
        return _split_chars(name, docs[0])
    n_val = max(1, round(len(docs) * VAL_FRACTION))
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
    val_idx = set(perm[:n_val].tolist())
    train = tuple(d for i, d in enumerate(docs) if i not in val_idx)
    val = tuple(d for i, d in enumerate(docs) if i in val_idx)
    return TextCorpus(name, train, val, split_sha256(train), split_sha256(val))


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    # split("\n"), not splitlines(): U+2028 may sit raw inside a JSON string.
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{printable(path)} line {lineno} is not JSON: {e.msg}") from None
        if not isinstance(obj, dict) or "text" not in obj:
            raise DataError(f'{printable(path)} line {lineno} has no "text" field; each line must be {{"text": "..."}}')
        if not isinstance(obj["text"], str):
            raise DataError(f'{printable(path)} line {lineno}: "text" must be a string, got {type(obj["text"]).__name__}')
        docs.append(obj["text"])
    return docs


def load_text_path(name: str, path: Path) -> TextCorpus:
    """The corpus of ``text:PATH``: a UTF-8 file, a folder of ``.txt`` files, or a ``.jsonl`` file."""
    if not path.exists():
        raise DataError(f"text corpus path {printable(path)} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"folder {printable(path)} holds no .txt files")
        return _split_documents(name, [read_utf8(f) for f in files])
    if path.suffix == ".jsonl":
        return _split_documents(name, _read_jsonl(path))
    text = read_utf8(path)
    if not text:
        raise DataError(f"text corpus {printable(path)} is empty")
    return _split_chars(name, text)


_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "--", "\u2026": "..."})


def clean_pydocs(text: str) -> str:
    """A documentation topic as plain English text.

    Typographic quotes, dashes and ellipses become ASCII (the rest of the corpus is ASCII),
    trailing spaces are stripped and runs of blank lines become one blank line.
    """
    text = text.translate(_TYPOGRAPHY)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def load_pydocs(name: str = "pydocs") -> TextCorpus:
    """Python's documentation topics (``pydoc_data.topics``), cleaned, split by topic with :data:`SPLIT_SEED`."""
    try:  # lazy: pydoc_data.topics is a megabyte of text that only this corpus reads
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        raise DataError("the pydocs corpus needs the standard library's pydoc_data, missing in this Python") from None
    return _split_documents(name, [clean_pydocs(topics[k]) for k in sorted(topics)])


TEXT_CORPORA = {"pydocs": load_pydocs}


def load_text_corpus(name: str) -> TextCorpus:
    """The corpus called ``name``: ``pydocs`` or ``text:PATH`` (see the module docstring)."""
    if name.startswith("text:"):
        path = name.removeprefix("text:")
        if not path:
            raise DataError('text corpus needs a path: "text:PATH"')
        return load_text_path(name, Path(path).expanduser())
    if name in TEXT_CORPORA:
        return TEXT_CORPORA[name](name)
    raise unknown_name_error("text corpus", name, [*TEXT_CORPORA, "text:PATH"], cls=DataError)


def encode_documents(docs: Sequence[str], encode_batch, eot_id: int) -> Tensor:
    """One int64 stream of the documents' tokens, with ``eot_id`` *between* documents.

    A single-document split (one file) therefore has no end-of-text token at all, as nanoGPT.

    Args:
        docs: the documents of a split.
        encode_batch: ``list[str] -> list[list[int]]`` (a tokenizer's ``encode_batch``).
        eot_id: the end-of-text id.
    Returns:
        (N,) int64.
    """
    parts = []
    for i, ids in enumerate(encode_batch(list(docs))):
        if i:
            parts.append(np.array([eot_id], dtype=np.int64))
        parts.append(np.asarray(ids, dtype=np.int64))
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class TokenWindows:
    """A split as one token stream whose examples are overlapping windows of ``seq_len + 1`` tokens.

    Example ``i`` is ``tokens[i : i + seq_len + 1]`` for ``i`` in ``[0, len(tokens) - seq_len)``:
    a causal LM reads ``[:-1]`` and predicts ``[1:]``; a bidirectional model may take
    ``[:seq_len]``. Draw the windows of optimiser step k with
    ``windows.batch(step_indices(len(windows), batch_size, seed, k))``.

    Attributes:
        tokens: (N,) int64.
        seq_len: model context length.
    """

    tokens: Tensor
    seq_len: int

    def __post_init__(self) -> None:
        """Check the stream once, so consumers can trust it."""
        if self.tokens.dim() != 1 or self.tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a 1-D int64 tensor, got {tuple(self.tokens.shape)} {self.tokens.dtype}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {self.seq_len}")
        if len(self.tokens) < self.seq_len + 1:
            raise DataError(
                f"a split of {len(self.tokens)} tokens is too short for one window of seq_len + 1 = "
                f"{self.seq_len + 1}; use a smaller seq_len or more text"
            )

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.tokens) - self.seq_len

    def __getitem__(self, i: int) -> Tensor:
        """Window ``i``: (seq_len + 1,) int64."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        return self.tokens[i : i + self.seq_len + 1]

    def batch(self, indices: Tensor) -> Tensor:
        """The windows at ``indices`` (B,): (B, seq_len + 1) int64."""
        offsets = torch.arange(self.seq_len + 1)
        return self.tokens[indices.long()[:, None] + offsets[None, :]]

    def chunks(self) -> Tensor:
        """Non-overlapping windows covering the stream (for evaluation): (M, seq_len + 1), consecutive windows sharing one token.

        Chunk j starts at ``j * seq_len``, so the targets ``[1:]`` of all chunks are every token
        after the first exactly once, except a tail shorter than a window, which is dropped.
        """
        starts = torch.arange(0, len(self), self.seq_len)
        return self.batch(starts)
