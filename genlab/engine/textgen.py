"""`genlab generate` and `genlab infill` as functions: text in, text out, from a text run's checkpoint.

The run's own tokenizer (tokenizer.json) encodes the prompt and decodes the tokens; the family
(GPT or MDLM) draws them. Results are plain dicts, so the command line prints them as text or JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from genlab.engine.runs import load_run_model


def generate_text(run_dir: Path, *, n: int = 1, seed: int = 0, model=None, **options) -> dict:
    """Draw `n` continuations of a prompt from a text run.

    Args:
        run_dir: a run folder of a text family (gpt, mdlm).
        n: texts to draw.
        seed: seeds every random draw (the same seed, weights and options give the same texts).
        model: the run's model, already loaded (a server keeps it); default: loaded from `run_dir`.
        options: the family's sampling options (prompt, max_new_tokens, temperature, top_k, top_p, steps);
            None means the run's default.

    Returns:
        {"run", "family", "prompt", "seed", "options", "completions", "texts", "new_tokens", "seconds",
        "tokens_per_second"}:
        `texts[i]` is the prompt followed by `completions[i]`.

    Raises:
        ConfigError: an image run, an option the family does not have, or a value out of range.
        DataError: a prompt with characters outside a character vocabulary.
    """
    model = model if model is not None else load_run_model(Path(run_dir), command="generate")
    opts = model.check_sample_options(**options)
    start = time.perf_counter()
    tokens = model.sample(n, generator=torch.Generator().manual_seed(seed), **opts)  # (n, new)
    seconds = time.perf_counter() - start
    prompt = opts.get("prompt") or ""
    completions = [model.decode(row) for row in tokens]
    return {"run": str(run_dir), "family": model.FAMILY, "prompt": prompt, "seed": seed, "options": opts,
            "completions": completions, "texts": [prompt + c for c in completions],
            "new_tokens": int(tokens.shape[1]), "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens.numel() / seconds, 1) if seconds > 0 else None}


def infill_text(run_dir: Path, text: str, *, steps: int | None = None, seed: int = 0, model=None) -> dict:
    """Fill every `[MASK:n]` span of `text` with exactly n tokens: conditioned on both sides by an mdlm run; by a
    gpt run left to right, from the text before each span only (the baseline; `method` says which). `model`: as in `generate_text`.

    Returns:
        {"run", "family", "template", "seed", "steps", "text", "fills", "fill_tokens", "method"}: `text` is the
        template with each span replaced by its fill, every other character byte-identical; `fills[i]` the
        i-th span's text and `fill_tokens[i]` its n token ids.

    Raises:
        ConfigError: not a text run, or --steps for a family without steps (gpt fills left to right).
        DataError: a malformed span ([MASK:0]), no span, characters outside a character vocabulary, or a
            template longer than the model's context.
    """
    model = model if model is not None else load_run_model(Path(run_dir), command="infill")
    opts = model.check_sample_options(steps=steps)
    result = model.infill(text, generator=torch.Generator().manual_seed(seed), **opts)
    return {"run": str(run_dir), "family": model.FAMILY, "template": text, "seed": seed,
            "steps": opts.get("steps", getattr(model.spec, "steps", None)), **result}
