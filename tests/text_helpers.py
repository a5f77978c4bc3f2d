"""Shared by the text tests: a small corpus file, tiny GPT/MDLM overrides, and a tiny trained run."""

from __future__ import annotations

from pathlib import Path

#: a small corpus with a fixed character set; 40 repetitions give ~7 kB, ample for windows of 16
CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "ROMEO:\nBut soft, what light through yonder window breaks?\n\n") * 40

#: a tiny transformer and run: milliseconds per step
TINY_TEXT = [
    "data.seq_len=16",
    "model.d_model=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_new_tokens=8",
    "optim.batch_size=4",
    "optim.warmup_steps=2",
    "optim.lr_schedule=constant",  # a cosine follows max_steps, which a resume test changes
    "trainer.progress=false",
    "trainer.sample_every=100000",
    "trainer.sample_n=2",
    "trainer.log_every=1",
]


def corpus_file(folder: Path, text: str = CORPUS) -> Path:
    """Write the corpus to folder/corpus.txt and return its path."""
    path = Path(folder) / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def text_overrides(corpus: Path, *more: str) -> list[str]:
    """The tiny overrides reading `corpus`."""
    return [f"data.name=text:{corpus}", *TINY_TEXT, *more]
