"""Character and byte-level BPE tokenizers: round trips, special tokens, unknown characters, save/load."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab.data.tokenizer import (
    EOT,
    MASK,
    PAD,
    UNK,
    BPETokenizer,
    CharTokenizer,
    TextTokenizer,
    load_tokenizer,
)
from genlab.errors import DataError

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Größe, naïve café — “quotes” and emoji 😀🚀 in UTF-8.\n" * 10,
    "def f(x):\n    return x ** 2  # tabs\tand\r\nnewlines\n" * 10,
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=400, specials=(EOT, MASK, PAD))


def test_import_of_the_pypi_package_is_not_shadowed():
    import genlab.data.tokenizer as mod

    assert mod.tokenizers.__name__ == "tokenizers" and hasattr(mod.tokenizers, "Tokenizer")


def test_char_vocabulary_is_the_sorted_training_characters_then_specials():
    tok = CharTokenizer.train("hello world", specials=(EOT, MASK))
    assert tok.chars == tuple(sorted(set("hello world")))
    assert tok.vocab_size == len(set("hello world")) + 2
    assert [tok.special_id(EOT), tok.special_id(MASK)] == [len(tok.chars), len(tok.chars) + 1]
    assert tok.encode(" dehlorw") == list(range(8))  # ids follow code-point order
    assert isinstance(tok, TextTokenizer)


@given(st.text(alphabet="abc xyz\n!é😀", max_size=200))
def test_char_round_trip(text):
    tok = CharTokenizer("abc xyz\n!é😀")
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_characters_raise_naming_them_by_default():
    tok = CharTokenizer.train("abc")
    with pytest.raises(DataError, match=r"2 character\(s\).*'x', 'z'"):
        tok.encode("abxcz")


def test_char_unknown_characters_map_to_unk_when_asked():
    tok = CharTokenizer.train("abc", unk=True)
    u = tok.special_id(UNK)
    assert tok.encode("axb") == [0, u, 1]
    assert tok.decode(tok.encode("axb")) == "a" + UNK + "b"


def test_special_names_in_text_are_read_literally():
    tok = CharTokenizer.train("<|endoftext|> ab")
    assert tok.special_id(EOT) not in tok.encode(EOT)
    assert tok.decode(tok.encode(EOT)) == EOT
    assert tok.decode([tok.special_id(EOT)]) == EOT


def test_char_rejects_out_of_range_ids_and_empty_training_text():
    tok = CharTokenizer.train("ab")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(DataError, match="empty"):
        CharTokenizer.train("")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_bpe_round_trips_arbitrary_utf8(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_special_tokens_have_ids_and_are_never_encoded_from_text(bpe):
    ids = {bpe.special_id(s) for s in (EOT, MASK, PAD)}
    assert ids == {0, 1, 2}
    text = f"a{EOT}b {MASK}"
    assert not ids & set(bpe.encode(text))
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode([bpe.special_id(EOT)]) == EOT
    with pytest.raises(KeyError, match="no special token"):
        bpe.special_id(UNK)


def test_bpe_learns_merges_and_compresses(bpe):
    assert 256 + 3 < bpe.vocab_size <= 400
    text = CORPUS[0]
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) / 2


def test_bpe_training_is_deterministic(bpe):
    assert BPETokenizer.train(CORPUS, vocab_size=400, specials=(EOT, MASK, PAD)) == bpe


def test_bpe_vocab_size_below_the_byte_alphabet_is_refused():
    with pytest.raises(DataError, match="256 bytes"):
        BPETokenizer.train(CORPUS, vocab_size=200)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_equality(tmp_path, bpe, kind):
    tok = bpe if kind == "bpe" else CharTokenizer.train("".join(CORPUS), specials=(EOT, MASK), unk=True)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    back = load_tokenizer(path)
    assert type(back) is type(tok) and back == tok
    assert type(tok).load(path) == tok
    for text in CORPUS:
        assert back.encode(text) == tok.encode(text)
    assert back.vocab_size == tok.vocab_size
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary file left


def test_load_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"kind": "wordpiece", "version": 1}))
    with pytest.raises(DataError, match="not a genlab tokenizer"):
        load_tokenizer(bad)
    CharTokenizer.train("ab").save(bad)
    with pytest.raises(DataError, match="not a bpe one"):
        BPETokenizer.load(bad)
