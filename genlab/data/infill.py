"""Infill templates: ``"But soft, what [MASK:12] yonder window breaks?"`` -> tokens, given positions, and back.

A template is literal text with spans ``[MASK:n]``, each to be filled with exactly ``n``
tokens. :meth:`InfillTemplate.encode` gives the token sequence (each literal piece encoded on
its own, each span as ``n`` mask ids) and the mask of given positions, which a masked-diffusion
sampler keeps fixed (``genlab.diffusion.discrete.sample_mdlm``). :meth:`InfillTemplate.fill`
decodes only the spans' tokens and splices them between the literal pieces, so every character
outside the spans is the template's own, byte for byte, whatever the tokenizer does.

There is no escape for a literal ``[MASK:`` in the text: anything matching ``[MASK:...]`` is a
span, and a malformed one (``[MASK:x]``, ``[MASK:0]``) is a :class:`~genlab.errors.DataError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.errors import DataError

__all__ = ["MAX_SPAN", "InfillTemplate"]

_SPAN = re.compile(r"\[MASK:([^\]]*)\]")
MAX_SPAN = 100_000  # a span longer than any context; a typo guard, the model's context is checked by the caller


@dataclass(frozen=True)
class InfillTemplate:
    """Literal pieces and span lengths: ``pieces[0], spans[0], pieces[1], ..., spans[-1], pieces[-1]``.

    Attributes:
        pieces: the literal text around the spans (``len(spans) + 1`` strings, possibly empty).
        spans: the number of tokens to generate for each span.
    """

    pieces: tuple[str, ...]
    spans: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> InfillTemplate:
        """Split ``text`` at its ``[MASK:n]`` spans; DataError for a malformed span or none at all."""
        pieces, spans, pos = [], [], 0
        for m in _SPAN.finditer(text):
            arg = m.group(1).strip()
            if not arg.isdigit() or not 0 < int(arg) <= MAX_SPAN:
                raise DataError(
                    f"bad span {m.group(0)!r} at character {m.start()}: write [MASK:n] with n a whole number "
                    f"from 1 to {MAX_SPAN} (the number of tokens to fill)"
                )
            pieces.append(text[pos:m.start()])
            spans.append(int(arg))
            pos = m.end()
        if not spans:
            raise DataError("the text has no [MASK:n] span to fill")
        pieces.append(text[pos:])
        return cls(tuple(pieces), tuple(spans))

    def encode(self, encode, mask_id: int) -> tuple[Tensor, Tensor]:
        """Tokens and given positions.

        Args:
            encode: ``str -> list[int]`` (a tokenizer's ``encode``).
            mask_id: the mask token's id.
        Returns:
            ``(tokens, given)``: (L,) int64 with ``mask_id`` at the spans, and (L,) bool, True
            at the literal (given) positions.
        """
        ids: list[int] = []
        given: list[bool] = []
        for i, piece in enumerate(self.pieces):
            piece_ids = encode(piece) if piece else []
            if mask_id in piece_ids:
                raise DataError("the literal text encodes to the mask token; it cannot be given")
            ids += piece_ids
            given += [True] * len(piece_ids)
            if i < len(self.spans):
                ids += [mask_id] * self.spans[i]
                given += [False] * self.spans[i]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(given, dtype=torch.bool)

    def fills(self, tokens: Tensor, given: Tensor) -> list[list[int]]:
        """The generated token ids of each span, read from a filled sequence (L,) and its given mask (L,)."""
        assert tokens.shape == given.shape and tokens.dim() == 1, "tokens and given must be (L,) each"
        # Spans are the runs of non-given positions, in order; encode() laid them out so.
        out, i = [], 0
        for n in self.spans:
            while given[i]:
                i += 1
            out.append(tokens[i:i + n].tolist())
            assert not bool(given[i:i + n].any()), "the given mask does not match this template"
            i += n
        return out

    def fill(self, tokens: Tensor, given: Tensor, decode) -> tuple[str, list[str]]:
        """The completed text and each span's decoded fill.

        Args:
            tokens: (L,) the filled sequence; given: (L,) from :meth:`encode`.
            decode: ``list[int] -> str`` (a tokenizer's ``decode``).
        """
        texts = [decode(ids) for ids in self.fills(tokens, given)]
        return self.splice(texts), texts

    def splice(self, texts: Sequence[str]) -> str:
        """The literal pieces with ``texts`` in place of the spans."""
        if len(texts) != len(self.spans):
            raise ValueError(f"{len(self.spans)} spans, {len(texts)} fills")
        out = [self.pieces[0]]
        for text, piece in zip(texts, self.pieces[1:], strict=True):
            out += [text, piece]
        return "".join(out)
