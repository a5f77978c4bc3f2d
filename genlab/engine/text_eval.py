"""`genlab eval` on a text run: the loss on the validation split, per token (nats) and per character (bits).

Every token of the validation stream after the first is scored once, in non-overlapping windows
of `seq_len + 1` tokens (`TokenWindows.chunks`; a tail shorter than one window is left out and
counted in `tokens_unscored`). GPT's numbers are exact; MDLM's are its ELBO, an upper bound
estimated by Monte Carlo over `draws` times per window, reported with "bound": true.

Bits per character convert the loss per token by the validation split's own ratio of tokens to
characters (for a character tokenizer on one file, one token is one character).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab.data import load_dataset
from genlab.data.tokens import TextData
from genlab.engine.runs import load_run_model, read_run
from genlab.errors import ConfigError
from genlab.eval.text import as_lists, distinct_n, unigram_entropy

#: the numbers of a text evaluation that are logged during training (eval/<name>)
TEXT_METRICS = ("loss_per_token", "bits_per_char", "perplexity")
#: span lengths (tokens) of the infill evaluation; those not shorter than the context are skipped
INFILL_SPANS = (1, 4, 16)


def text_scores(model, val: TextData, *, seed: int = 0, draws: int | None = None, batch_size: int = 64) -> dict:
    """The validation loss of a text model on a split (see the module docstring).

    Args:
        model: a GPT or MDLM model with its tokenizer.
        val: the validation split, tokenized by the model's tokenizer.
        seed: seeds MDLM's times and masks (GPT's loss is exact).
        draws: MDLM: times per window (default: the run's `likelihood_draws`).

    Returns:
        {"loss_per_token" (nats), "bits_per_token", "bits_per_char", "perplexity", "bound", "unit",
        "likelihood", "tokens_scored", "tokens_unscored", "val_tokens", "val_chars"}.
    """
    chunks = val.windows.chunks()  # (M, seq_len + 1)
    bound = bool(getattr(model, "LIKELIHOOD_IS_BOUND", False))
    g = torch.Generator().manual_seed(seed)
    if bound:  # a bidirectional model scores the same tokens: each chunk's last seq_len
        bits = model.log_likelihood(chunks[:, 1:], generator=g, batch_size=batch_size, draws=draws)
    else:
        bits = model.log_likelihood(chunks, generator=g, batch_size=batch_size)
    scored = chunks.shape[0] * (chunks.shape[1] - 1)
    bits_per_token = float(bits.mean()) if len(bits) else float("nan")  # every chunk scores seq_len tokens
    val_tokens = len(val.windows.tokens)
    return {
        "loss_per_token": bits_per_token * math.log(2),
        "bits_per_token": bits_per_token,
        "bits_per_char": bits_per_token * val_tokens / val.num_chars,
        "perplexity": 2.0 ** bits_per_token,
        "bound": bound,
        "unit": model.likelihood_unit,
        "likelihood": model.LIKELIHOOD,
        "tokens_scored": scored,
        "tokens_unscored": val_tokens - scored,
        "val_tokens": val_tokens,
        "val_chars": val.num_chars,
    }


def infill_scores(model, val: TextData, *, n: int = 64, spans: tuple[int, ...] = INFILL_SPANS, seed: int = 0) -> dict:
    """How often a model fills a held-out span exactly: for each span length, `n` validation windows of
    `seq_len` tokens with the span masked in their middle, filled by the family's `fill_spans` (MDLM: both
    sides; GPT: the left-to-right baseline).

    Returns:
        {"infill": {span: {"exact_match", "token_accuracy"}}, "infill_n", "infill_method"}; exact match is
        the share of windows whose whole span is reproduced, token accuracy the share of span tokens.
    """
    chunks = val.windows.chunks()[:, 1:]  # (M, seq_len): the windows the loss scores
    g = torch.Generator().manual_seed(seed)
    rows = chunks[torch.randperm(len(chunks), generator=g)[:n]]
    L, out = rows.shape[1], {}
    for span in spans:
        if span >= L:
            continue
        start = (L - span) // 2
        given = torch.ones(L, dtype=torch.bool)
        given[start:start + span] = False
        filled = model.fill_spans(rows.masked_fill(~given, model.mask_id), given, generator=g)  # the span unseen
        hit = filled[:, ~given] == rows[:, ~given]  # (n, span)
        out[str(span)] = {"exact_match": float(hit.all(dim=1).double().mean()),
                          "token_accuracy": float(hit.double().mean())}
    return {"infill": out, "infill_n": len(rows), "infill_method": model.INFILL_METHOD}


@torch.no_grad()
def generation_scores(model, reference, *, n: int = 64, seed: int = 0) -> dict:
    """Samples of `model` scored by a reference GPT: generative perplexity beside their unigram entropy and
    distinct-n (a low perplexity from collapsed, repetitive samples is the known trap).

    `n` samples are drawn with the run's own sampling settings (`model.sample`), decoded to text (special
    tokens such as end-of-text dropped), re-encoded with the reference's tokenizer and scored exactly in
    windows of the reference's context.

    Returns:
        {"gen_perplexity" (per reference token), "gen_bits_per_char", "gen_n", "unigram_entropy" (nats, of
        the model's own tokens), "distinct_1", "distinct_2", "distinct_3", "reference_family"}.
    """
    if getattr(reference, "FAMILY", None) != "gpt":
        raise ConfigError("--reference must be a gpt run (its likelihood is exact)")
    ids = model.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, T)
    lists = as_lists(ids)
    tok = model.tokenizer
    special = {tok.special_id(name) for name in tok.specials}
    texts = [model.decode([t for t in row if t not in special]) for row in lists]  # the text, markers dropped
    nats, tokens, chars = 0.0, 0, sum(len(t) for t in texts)
    for text in texts:
        ref_ids = torch.tensor(reference.encode_prompt(text), dtype=torch.long)
        size = reference.context + 1  # windows share their ends: every token after the first scored once
        for start in range(0, max(1, len(ref_ids) - 1), size - 1):
            window = ref_ids[start:start + size]
            if len(window) < 2:
                break
            bits = float(reference.log_likelihood(window[None])[0])  # mean bits per predicted token
            nats += bits * math.log(2) * (len(window) - 1)
            tokens += len(window) - 1
    return {"gen_perplexity": math.exp(nats / tokens) if tokens else float("nan"),
            "gen_bits_per_char": nats / math.log(2) / chars if chars else float("nan"), "gen_n": n,
            "unigram_entropy": unigram_entropy(lists), **{f"distinct_{k}": distinct_n(lists, k) for k in (1, 2, 3)},
            "reference_family": reference.FAMILY}


def evaluate_text_run(run_dir: str | Path, *, seed: int = 0, draws: int | None = None, infill_n: int = 64,
                      reference: str | Path | None = None, gen_n: int = 64) -> dict:
    """`genlab eval RUN` on a text run: `text_scores` on its validation split with the run's own tokenizer,
    `infill_scores` on `infill_n` of its windows (0 skips them), and with a `reference` GPT run,
    `generation_scores` of `gen_n` samples."""
    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    model = load_run_model(run_dir)
    val = load_dataset(cfg.data, "test", tokenizer=model.tokenizer)
    result = text_scores(model, val, seed=seed, draws=draws)
    if infill_n:
        result.update(infill_scores(model, val, n=infill_n, seed=seed))
    if reference is not None:
        result.update(generation_scores(model, load_run_model(Path(reference)), n=gen_n, seed=seed),
                      reference=str(reference))
    return {"run": str(run_dir), "family": cfg.family, "dataset": cfg.data.name, "split": "val",
            "tokenizer": info.corpus.tokenizer, "vocab_size": info.vocab_size, "seq_len": info.shape[0],
            "seed": seed, **({"draws": draws or model.spec.likelihood_draws} if result["bound"] else {}), **result}
