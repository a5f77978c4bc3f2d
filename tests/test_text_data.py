"""Text corpora (file, folder, JSONL, pydocs), their splits and hashes, errors, and token windows."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from genlab.data.batches import step_indices
from genlab.data.text import (
    TokenWindows,
    clean_pydocs,
    encode_documents,
    load_text_corpus,
    split_sha256,
)
from genlab.data.tokenizer import EOT, CharTokenizer
from genlab.errors import DataError


def test_single_file_uses_nanogpt_split(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1003)) + "é\n"
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_text_corpus(f"text:{path}")
    n = int(len(text) * 0.9)  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
    assert corpus.train == (text[:n],) and corpus.val == (text[n:],)
    assert corpus.train[0] + corpus.val[0] == text
    assert corpus.num_chars("train") + corpus.num_chars("val") == len(text)
    assert corpus.name == f"text:{path}"


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello world, a file with a BOM".encode("utf-8"))
    corpus = load_text_corpus(f"text:{path}")
    assert (corpus.train[0] + corpus.val[0]).startswith("hello")


def test_split_hash_is_sha256_of_length_prefixed_documents():
    docs = ("ab", "cé")
    want = hashlib.sha256(b"".join(len(d.encode()).to_bytes(8, "little") + d.encode() for d in docs)).hexdigest()
    assert split_sha256(docs) == want
    assert split_sha256(("a", "bc")) != split_sha256(("ab", "c"))


def test_hashes_identify_the_splits(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("x" * 50 + "y" * 50)
    c = load_text_corpus(f"text:{path}")
    assert c.train_sha256 == split_sha256(c.train) and c.val_sha256 == split_sha256(c.val)
    path.write_text("x" * 50 + "y" * 49 + "z")
    c2 = load_text_corpus(f"text:{path}")
    assert c2.train_sha256 == c.train_sha256 and c2.val_sha256 != c.val_sha256


def _docs(n):
    return [f"document number {i} " * (i % 3 + 1) for i in range(n)]


def test_folder_splits_by_document_with_a_fixed_seed(tmp_path):
    docs = _docs(30)
    (tmp_path / "sub").mkdir()
    for i, d in enumerate(docs):
        folder = tmp_path / "sub" if i % 2 else tmp_path
        (folder / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not a txt file")
    a = load_text_corpus(f"text:{tmp_path}")
    b = load_text_corpus(f"text:{tmp_path}")
    assert a == b  # the split does not depend on anything but the data
    assert len(a.val) == 3 and len(a.train) == 27
    assert sorted(a.train + a.val) == sorted(docs)
    assert not set(a.train) & set(a.val)


def test_jsonl_splits_by_document(tmp_path):
    docs = _docs(20) + ["line\u2028separator inside a string"]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "id": i}, ensure_ascii=False) for i, d in enumerate(docs)) + "\n\n")
    c = load_text_corpus(f"text:{path}")
    assert len(c.val) == 2 and sorted(c.train + c.val) == sorted(docs)


def test_pydocs_is_split_by_topic_and_clean():
    from pydoc_data.topics import topics

    c = load_text_corpus("pydocs")
    assert len(c.train) + len(c.val) == len(topics)
    assert len(c.val) == max(1, round(len(topics) * 0.1))
    assert load_text_corpus("pydocs").val_sha256 == c.val_sha256
    text = "".join(c.train + c.val)
    assert "\u2019" not in text and "\n\n\n" not in text and " \n" not in text
    assert c.num_chars("train") > 100_000


def test_clean_pydocs():
    assert clean_pydocs("It\u2019s \u201cx\u201d \u2014 ok\u2026  \n\n\n\nnext  ") == "It's \"x\" -- ok...\n\nnext\n"


def test_empty_or_too_short_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_text_corpus(f"text:{path}")
    path.write_bytes(b"x")  # int(1 * 0.9) = 0: nothing would validate... and nothing train
    with pytest.raises(DataError, match="too short"):
        load_text_corpus(f"text:{path}")


def test_empty_folder_and_empty_documents_are_errors(tmp_path):
    with pytest.raises(DataError, match="no .txt files"):
        load_text_corpus(f"text:{tmp_path}")
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_text_corpus(f"text:{tmp_path}")


def test_non_utf8_file_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf" + b"\xe9 au lait")
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text: byte 0xe9 at offset 3"):
        load_text_corpus(f"text:{path}")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match=r"bad\.txt is not UTF-8.*offset 0"):
        load_text_corpus(f"text:{folder}")


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text_corpus(f"text:{tmp_path / 'nope.txt'}")
    with pytest.raises(DataError, match='did you mean "pydocs"'):
        load_text_corpus("pydoc")
    with pytest.raises(DataError, match="needs a path"):
        load_text_corpus("text:")


def test_jsonl_without_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r'line 2 has no "text" field'):
        load_text_corpus(f"text:{path}")
    path.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match="line 1.*must be a string"):
        load_text_corpus(f"text:{path}")
    path.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        load_text_corpus(f"text:{path}")


def test_encode_documents_puts_eot_between_documents():
    tok = CharTokenizer.train("abc")
    eot = tok.special_id(EOT)
    assert encode_documents(["ab", "c", "a"], tok.encode_batch, eot).tolist() == [0, 1, eot, 2, eot, 0]
    assert encode_documents(["abc"], tok.encode_batch, eot).tolist() == [0, 1, 2]  # one file: none, as nanoGPT


def test_token_windows_index_and_batch():
    tokens = torch.arange(100, 120)
    w = TokenWindows(tokens, seq_len=4)
    assert len(w) == 16
    assert w[0].tolist() == [100, 101, 102, 103, 104]
    assert w[15].tolist() == [115, 116, 117, 118, 119]
    with pytest.raises(IndexError):
        w[16]
    idx = step_indices(len(w), batch_size=6, seed=3, step=2)
    b = w.batch(idx)
    assert b.shape == (6, 5) and b.dtype == torch.long
    for row, i in zip(b, idx.tolist()):
        assert torch.equal(row, w[i])
    # Each window's targets are its inputs shifted by one.
    assert torch.equal(b[:, 1:], b[:, :-1] + 1)
    # Over an epoch every window is drawn exactly once.
    epoch = torch.cat([step_indices(len(w), 4, 3, k) for k in range(4)])
    assert sorted(epoch.tolist()) == list(range(16))


def test_token_windows_chunks_cover_each_target_once():
    w = TokenWindows(torch.arange(23), seq_len=5)
    c = w.chunks()
    assert c.shape == (4, 6)
    targets = c[:, 1:].flatten().tolist()
    assert targets == list(range(1, 21))


def test_token_windows_too_short_is_a_data_error():
    with pytest.raises(DataError, match="too short"):
        TokenWindows(torch.arange(4), seq_len=4)
    with pytest.raises(ValueError, match="int64"):
        TokenWindows(torch.arange(10).int(), seq_len=4)
