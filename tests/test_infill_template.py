"""Infill templates: exactly n tokens per [MASK:n], literal text kept byte for byte, clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given as hgiven
from hypothesis import strategies as st

from genlab.data.infill import InfillTemplate
from genlab.data.tokenizer import EOT, MASK, BPETokenizer, CharTokenizer
from genlab.errors import DataError

TEXT = "ROMEO: But soft, what [MASK:12] yonder window breaks?"


def test_parse_splits_pieces_and_spans():
    t = InfillTemplate.parse("[MASK:2]ab [MASK:3][MASK:1] c")
    assert t.pieces == ("", "ab ", "", " c") and t.spans == (2, 3, 1)


@pytest.mark.parametrize("bad", ["x [MASK:0] y", "[MASK:abc]", "[MASK:-3]", "[MASK:]", "[MASK:1e3]", "no span here"])
def test_bad_templates_are_data_errors(bad):
    with pytest.raises(DataError, match=r"MASK"):
        InfillTemplate.parse(bad)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_encode_gives_exactly_n_masks_per_span_and_fill_keeps_the_literal_text(kind):
    corpus = TEXT.replace("[MASK:12]", "light through") * 5
    tok = (CharTokenizer.train(corpus, specials=(EOT, MASK)) if kind == "char"
           else BPETokenizer.train([corpus], vocab_size=300, specials=(EOT, MASK)))
    m = tok.special_id(MASK)
    t = InfillTemplate.parse(TEXT + " [MASK:3]")
    tokens, given = t.encode(tok.encode, m)
    assert (tokens == m).sum() == 15 and torch.equal(given, tokens != m)
    # Fill the spans with some real token ids: the text outside them is the template's own.
    filler = tok.encode("light")[0]
    filled = torch.where(given, tokens, torch.full_like(tokens, filler))
    text, fills = t.fill(filled, given, tok.decode)
    assert [len(ids) for ids in t.fills(filled, given)] == [12, 3]
    assert fills == [tok.decode([filler] * 12), tok.decode([filler] * 3)]
    assert text == TEXT.replace("[MASK:12]", fills[0]) + " " + fills[1]


def test_characters_outside_a_char_vocabulary_are_named():
    tok = CharTokenizer.train("abc ", specials=(EOT, MASK))
    with pytest.raises(DataError, match="'z'"):
        InfillTemplate.parse("abz [MASK:2]").encode(tok.encode, tok.special_id(MASK))


@hgiven(st.lists(st.text(alphabet="ab ]\n[", max_size=8), min_size=2, max_size=5),
        st.lists(st.integers(1, 4), min_size=4, max_size=4))
def test_splice_of_the_spans_is_byte_identical_outside_them(pieces, lengths):
    template = "".join(p + (f"[MASK:{n}]" if i < len(pieces) - 1 else "")
                       for i, (p, n) in enumerate(zip(pieces, lengths, strict=False)))
    t = InfillTemplate.parse(template)  # the alphabet cannot spell "MASK", so only the real spans parse
    tok = CharTokenizer("ab ]\n[MASK:0123456789xy", specials=(EOT, MASK))
    tokens, given = t.encode(tok.encode, tok.special_id(MASK))
    x = tok.encode("x")[0]
    text, fills = t.fill(torch.where(given, tokens, torch.full_like(tokens, x)), given, tok.decode)
    assert fills == ["x" * n for n in t.spans]
    assert text == t.splice(fills)
    assert len(text) == len(template) - sum(len(f"[MASK:{n}]") - n for n in t.spans)
