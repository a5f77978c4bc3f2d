"""Chat data for the RLHF pipeline: JSONL records, the chat template, padded batches, built-in prompts.

Formats (those of the public preference-tuning ecosystem): one JSON object per line, with
``prompt`` and ``completion`` for demonstrations (SFT) and ``prompt``, ``chosen`` and ``rejected``
for preference pairs.

The template. A turn is ``"Q: " + prompt + "\\nA:"`` then the completion's tokens, then the
**end-of-turn** token (the tokenizer's end-of-text id). Padding fills with another id (the
tokenizer's mask id, which a causal model never sees in training and is banned from sampling),
so the end token is never a padding token; a boolean mask, never the pad id, says which
positions are real. Layout of a batch: prompts left-padded to a common length ``P`` (so every
response starts at column ``P``), responses right-padded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genlab.data.text import load_text_corpus
from genlab.data.tokenizer import EOT, MASK, TextTokenizer
from genlab.errors import DataError, printable
from genlab.rlhf import end_index

__all__ = ["ChatBatch", "ChatTemplate", "builtin_prompts", "read_jsonl", "write_jsonl", "SFT_KEYS", "PREFERENCE_KEYS"]

SFT_KEYS = ("prompt", "completion")
PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


def read_jsonl(path: str | Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
    """The records of a JSONL file, each with string values for `keys` (extra keys are kept).

    Raises:
        DataError: a missing file, a line that is not a JSON object, or a missing / non-string key (with its line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{printable(path)} does not exist; give a JSONL file with keys {', '.join(keys)}") from None
    except UnicodeDecodeError:
        raise DataError(f"{printable(path)} is not UTF-8 text") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{printable(path)}:{n} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) for k in keys):
            raise DataError(f"{printable(path)}:{n} needs string fields {', '.join(keys)}")
        out.append(rec)
    if not out:
        raise DataError(f"{printable(path)} holds no records")
    return out


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Write records one JSON object a line (atomically: a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class ChatBatch:
    """Prompts left-padded to a common length P, then responses right-padded.

    Attributes:
        tokens: (B, P + L) int64.
        pad_mask: (B, P + L) bool, True at padding (left of prompts, right of responses).
        response_mask: (B, L) bool, True on response tokens (the end token included).
        prompt_len: P, the column where every response starts.
    """

    tokens: Tensor
    pad_mask: Tensor
    response_mask: Tensor
    prompt_len: int

    @property
    def responses(self) -> Tensor:
        """(B, L) the response tokens (padding included)."""
        return self.tokens[:, self.prompt_len:]


class ChatTemplate:
    """The chat template of a tokenizer: prompt and response ids, the end-of-turn and padding ids, batches."""

    PREFIX, SUFFIX = "Q: ", "\nA:"

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.end_id = tokenizer.special_id(EOT)
        self.pad_id = tokenizer.special_id(MASK)
        assert self.end_id != self.pad_id, "the end-of-turn token must not be the padding token"

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids of a user turn: ``"Q: {prompt}\\nA:"``."""
        return self.tokenizer.encode(self.PREFIX + prompt + self.SUFFIX)

    def response_ids(self, completion: str, *, end: bool = True) -> list[int]:
        """The ids of an assistant turn: a leading space, the text, then the end-of-turn id (when `end`)."""
        return self.tokenizer.encode(" " + completion.strip()) + ([self.end_id] if end else [])

    def decode_response(self, ids) -> str:
        """The text of response ids, cut at the first end-of-turn (or padding) token."""
        out = []
        for i in (int(i) for i in ids):
            if i in (self.end_id, self.pad_id):
                break
            out.append(i)
        return self.tokenizer.decode(out).strip()

    def batch(self, prompts: list[list[int]], responses: list[list[int]] | None = None,
              response_len: int | None = None) -> ChatBatch:
        """Left-pad `prompts`, right-pad `responses` (none: an empty response part of `response_len` padding)."""
        P = max(len(p) for p in prompts)
        responses = responses if responses is not None else [[] for _ in prompts]
        L = max([len(r) for r in responses] + [response_len or 0])
        B = len(prompts)
        tokens = torch.full((B, P + L), self.pad_id, dtype=torch.long)
        pad = torch.ones(B, P + L, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            tokens[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
            pad[i, P - len(p):P] = False
            if r:
                tokens[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
                pad[i, P:P + len(r)] = False
        return ChatBatch(tokens, pad, ~pad[:, P:], P)

    def ended(self, responses: Tensor, response_mask: Tensor) -> Tensor:
        """(B,) bool: the response's last real token is the end-of-turn token."""
        rows = torch.arange(len(responses))
        return (responses[rows, end_index(response_mask)] == self.end_id) & response_mask.any(dim=1)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
#: the longest word of a usable sentence (longer ones are URLs, identifiers or run-together sentences)
MAX_WORD = 16


def builtin_prompts(corpus: str, n_train: int, n_eval: int, *, prompt_words: int = 4, max_words: int = 20,
                    seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and held-out prompts (with demonstrations) drawn from the sentences of a text corpus.

    Usable sentences (plain prose of 2 * prompt_words..max_words words of at most MAX_WORD characters, from both
    splits of the corpus)
    are de-duplicated and shuffled with `seed`; the first `n_eval` are held out, the next `n_train` train. A sentence's
    first `prompt_words` words are the prompt, the rest of it the demonstration.

    Raises:
        DataError: the corpus holds fewer than n_train + n_eval usable sentences.
    """
    text = load_text_corpus(corpus)
    sentences = []
    for doc in (*text.split("train"), *text.split("val")):
        for para in doc.split("\n\n"):
            for s in _SENTENCE.split(" ".join(para.split())):
                words = s.split()
                if 2 * prompt_words <= len(words) <= max_words and s[0].isupper() and s.isascii() \
                        and not any(c in s for c in "{}[]()=<>`*|#_/%") and max(map(len, words)) <= MAX_WORD:
                    sentences.append(tuple(words))
    sentences = list(dict.fromkeys(sentences))  # a sentence repeated across topics is one prompt, never in both splits
    if len(sentences) < n_train + n_eval:
        raise DataError(f"{corpus} has {len(sentences)} usable sentences, fewer than the {n_train} + {n_eval} "
                        f"prompts asked for; ask for fewer")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    records = [{"prompt": " ".join(sentences[i][:prompt_words]), "completion": " ".join(sentences[i][prompt_words:])}
               for i in order[:n_train + n_eval]]
    return records[n_eval:], records[:n_eval]
