"""Text tokenizers trained locally: character-level and byte-level BPE, saved as JSON in a run folder.

Both tokenizers share one face (:class:`TextTokenizer`): ``encode(str) -> list[int]``,
``decode(list[int]) -> str``, ``vocab_size``, ``special_id(name)`` and ``save(path)``;
:func:`load_tokenizer` reads either back. Nothing is ever downloaded.

Special tokens (``EOT``, and ``MASK``/``PAD``/``UNK`` where a family asks for them) have ids of
their own and are *never produced by encoding text*: ``encode`` reads its input literally, so a
corpus that happens to contain the string ``"<|endoftext|>"`` cannot forge a document
boundary. Callers insert special ids explicitly (``tok.special_id(EOT)``). ``decode`` renders a
special id as its name.

- :class:`CharTokenizer`: one id per character of the training text, sorted by code point (as
  nanoGPT's ``shakespeare_char``, so its ids match nanoGPT's), then the special tokens.
  Characters outside the vocabulary raise a :class:`~genlab.errors.DataError` naming them,
  unless the tokenizer was built with ``unk=True``, in which case they map to ``UNK``.
- :class:`WordTokenizer`: one id per word of a fixed vocabulary (special tokens first, so ``PAD``
  is id 0 when it is the first special), for the small closed grammars of captions
  (``genlab.data.shape_captions``). Its ``encode`` takes a batch and a length and returns padded
  ids and a mask; a word outside the vocabulary raises a DataError naming it (no ``UNK``).
- :class:`BPETokenizer`: GPT-2-style byte-level BPE (Sennrich et al. 2016; Radford et al.
  2019) trained with the Hugging Face ``tokenizers`` library. Its base alphabet is the 256
  bytes, so every UTF-8 string encodes and decodes back exactly.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import tokenizers  # the PyPI package (absolute import; this module is genlab.data.tokenizer)
import torch

from genlab.errors import DataError, printable

__all__ = [
    "EOT",
    "MASK",
    "PAD",
    "TOKENIZERS",
    "UNK",
    "BPETokenizer",
    "CharTokenizer",
    "TextTokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "split_words",
]

EOT = "<|endoftext|>"
MASK = "<|mask|>"
PAD = "<|pad|>"
UNK = "<|unk|>"

FORMAT_VERSION = 1
_WORD_RE = re.compile(r"[a-z]+|\S")  # a run of letters, or any other single non-space character


@runtime_checkable
class TextTokenizer(Protocol):
    """What a text family needs from a tokenizer."""

    kind: str
    specials: tuple[str, ...]

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, name: str) -> int: ...

    def save(self, path: str | os.PathLike) -> None: ...


def _check_specials(specials: Sequence[str]) -> tuple[str, ...]:
    specials = tuple(specials)
    if len(set(specials)) != len(specials) or any(not s for s in specials):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}")
    return specials


def _write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write atomically: a temporary name in the same folder, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: str | os.PathLike) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {printable(path)} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"tokenizer file {printable(path)} is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("kind") not in TOKENIZERS or obj.get("version") != FORMAT_VERSION:
        raise DataError(f"{printable(path)} is not a genlab tokenizer file (version {FORMAT_VERSION})")
    return obj


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"token ids out of range [0, {vocab_size}): {bad[:5]}")


class _SavedTokenizer(ABC):
    """What both tokenizers share: special-token ids, JSON save and load, and equality of their JSON forms."""

    kind = "?"
    specials: tuple[str, ...]
    _special_ids: dict[str, int]

    def special_id(self, name: str) -> int:
        """The id of special token ``name``."""
        try:
            return self._special_ids[name]
        except KeyError:
            raise KeyError(f"this tokenizer has no special token {name!r}; it has {list(self.specials)}") from None

    @abstractmethod
    def to_dict(self) -> dict:
        """The JSON form (see :meth:`save`)."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (atomically)."""
        _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a tokenizer of this kind written by :meth:`save`."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"{printable(path)} holds a {tok.kind} tokenizer, not a {cls.kind} one")
        return tok

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()


class CharTokenizer(_SavedTokenizer):
    """One id per character: the training text's characters sorted by code point, then special tokens.

    Args:
        chars: the vocabulary's characters (de-duplicated and sorted here).
        specials: names of the special tokens, given ids after the characters.
        unk: map characters outside the vocabulary to an ``UNK`` special token instead of
            raising a :class:`DataError` that names them.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str], specials: Sequence[str] = (EOT,), unk: bool = False) -> None:
        self.chars = tuple(sorted(set(chars)))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer characters must be single characters")
        specials = _check_specials(specials)
        if unk and UNK not in specials:
            specials = specials + (UNK,)
        self.specials, self.unk = specials, unk
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._itos = list(self.chars) + list(self.specials)
        self._special_ids = {s: len(self.chars) + i for i, s in enumerate(self.specials)}

    @classmethod
    def train(cls, texts: str | Iterable[str], specials: Sequence[str] = (EOT,), unk: bool = False) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character of ``texts`` (one string or several)."""
        chars: set[str] = set()
        for text in [texts] if isinstance(texts, str) else texts:
            chars.update(text)
        if not chars:
            raise DataError("cannot build a character vocabulary from empty text")
        return cls(chars, specials, unk)

    @property
    def vocab_size(self) -> int:
        """Characters plus special tokens."""
        return len(self._itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``, read literally (special-token names are plain characters here)."""
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        if self.unk:
            u = self._special_ids[UNK]
            return [stoi.get(c, u) for c in text]
        unknown = sorted({c for c in text if c not in stoi})
        shown = ", ".join(repr(c) for c in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise DataError(f"text has {len(unknown)} character(s) outside the tokenizer's vocabulary: {shown}")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; a special id becomes its name."""
        _check_ids(ids, self.vocab_size)
        return "".join(self._itos[int(i)] for i in ids)

    def to_dict(self) -> dict:
        """The JSON form (see :meth:`save`)."""
        return {"kind": self.kind, "version": FORMAT_VERSION, "chars": "".join(self.chars),
                "specials": list(self.specials), "unk": self.unk}

    @classmethod
    def from_dict(cls, obj: dict) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        return cls(obj["chars"], obj["specials"], bool(obj["unk"]))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, specials={self.specials}, unk={self.unk})"


class BPETokenizer(_SavedTokenizer):
    """Byte-level BPE on the ``tokenizers`` library: special tokens first (ids 0..), then bytes and merges.

    Build one with :meth:`train` or :meth:`load`; the wrapped ``tokenizers.Tokenizer`` is ``self.tk``.
    """

    kind = "bpe"

    def __init__(self, tk: tokenizers.Tokenizer, specials: Sequence[str]) -> None:
        self.tk, self.specials = tk, _check_specials(specials)
        # Special-token strings in the input are encoded as ordinary text, never as special ids.
        self.tk.encode_special_tokens = True
        self._special_ids = {}
        for s in self.specials:
            i = tk.token_to_id(s)
            if i is None:
                raise DataError(f"BPE tokenizer lacks its special token {s!r}")
            self._special_ids[s] = i

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, specials: Sequence[str] = (EOT,),
              min_frequency: int = 2) -> BPETokenizer:
        """Learn merges on ``texts`` (one string or an iterable of documents) up to ``vocab_size`` ids."""
        specials = _check_specials(specials)
        alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise DataError(f"BPE vocab_size={vocab_size} is below the 256 bytes plus {len(specials)} special token(s)")
        tk = tokenizers.Tokenizer(tokenizers.models.BPE())
        tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                 special_tokens=list(specials), initial_alphabet=alphabet,
                                                 show_progress=False)
        tk.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer=trainer)
        return cls(tk, specials)

    @property
    def vocab_size(self) -> int:
        """Special tokens, the 256 bytes and the learned merges."""
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (any string; read literally)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text, in parallel threads inside ``tokenizers``."""
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; a special id becomes its name. Ids that split a UTF-8 character give U+FFFD."""
        _check_ids(ids, self.vocab_size)
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict:
        """The JSON form (see :meth:`save`): genlab's header around the ``tokenizers`` JSON."""
        return {"kind": self.kind, "version": FORMAT_VERSION, "specials": list(self.specials),
                "tokenizer": json.loads(self.tk.to_str())}

    @classmethod
    def from_dict(cls, obj: dict) -> BPETokenizer:
        """Inverse of :meth:`to_dict`."""
        try:
            tk = tokenizers.Tokenizer.from_str(json.dumps(obj["tokenizer"]))
        except Exception as e:  # noqa: BLE001 -- the Rust side raises a bare Exception on malformed JSON
            raise DataError(f"malformed BPE tokenizer JSON: {e}") from None
        return cls(tk, obj["specials"])

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, specials={self.specials})"


def split_words(text: str) -> list[str]:
    """Words of ``text`` as :class:`WordTokenizer` reads them: lower case, a hyphen is a space, and each
    symbol that is not a letter (":", ",", a digit) is a word of its own."""
    return _WORD_RE.findall(text.lower().replace("-", " "))


class WordTokenizer(_SavedTokenizer):
    """One id per word of a fixed vocabulary: the special tokens first (ids 0..), then the words, sorted.

    Args:
        words: the vocabulary (de-duplicated and sorted here); each must be one word of `split_words`.
        specials: names of the special tokens; the first one pads `encode`'s output.
    """

    kind = "word"

    def __init__(self, words: Iterable[str], specials: Sequence[str] = (PAD,)) -> None:
        self.words = tuple(sorted(set(words)))
        if not self.words or any(split_words(w) != [w] for w in self.words):
            raise ValueError("WordTokenizer words must be non-empty single lower-case words or symbols")
        self.specials = _check_specials(specials)
        self._itos = list(self.specials) + list(self.words)
        self._special_ids = {s: i for i, s in enumerate(self.specials)}
        self._stoi = {w: len(self.specials) + i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        """Special tokens plus words."""
        return len(self._itos)

    def encode_words(self, text: str) -> list[int]:
        """Ids of the words of ``text``; raises DataError naming the words outside the vocabulary."""
        words = split_words(text)
        unknown = sorted({w for w in words if w not in self._stoi})
        if unknown:
            raise DataError(f"{printable(text)!r} has {len(unknown)} word(s) outside the tokenizer's vocabulary: "
                            f"{', '.join(unknown)}")
        return [self._stoi[w] for w in words]

    def encode(self, texts: Sequence[str], max_len: int | None = None):
        """Ids (B, L) int64 padded with the first special token, and mask (B, L) bool, True at real words.

        Args:
            texts: B strings.
            max_len: L; default the most words in ``texts`` (at least 1).

        Raises:
            DataError: an unknown word (named), or a text longer than ``max_len`` words.
        """
        if isinstance(texts, str):
            raise TypeError("WordTokenizer.encode takes a sequence of texts; wrap one text in a list")
        rows = [self.encode_words(t) for t in texts]
        length = max([1, *map(len, rows)]) if max_len is None else max_len
        ids = torch.full((len(rows), length), self._special_ids[self.specials[0]], dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            if len(row) > length:
                raise DataError(f"{printable(texts[i])!r} has {len(row)} words, more than max_len={length}")
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` joined by spaces; a special id becomes its name."""
        _check_ids(ids, self.vocab_size)
        return " ".join(self._itos[int(i)] for i in ids)

    def to_dict(self) -> dict:
        """The JSON form (see :meth:`save`)."""
        return {"kind": self.kind, "version": FORMAT_VERSION, "words": list(self.words),
                "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, obj: dict) -> WordTokenizer:
        """Inverse of :meth:`to_dict`."""
        return cls(obj["words"], obj["specials"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={self.specials})"


TOKENIZERS: dict[str, type] = {"char": CharTokenizer, "bpe": BPETokenizer, "word": WordTokenizer}


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | BPETokenizer | WordTokenizer:
    """Read a tokenizer JSON file written by ``save`` (either kind)."""
    obj = _read_json(path)
    try:
        return TOKENIZERS[obj["kind"]].from_dict(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"tokenizer file {printable(path)} is malformed: {e}") from None
