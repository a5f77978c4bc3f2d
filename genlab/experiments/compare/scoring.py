"""What a finished compare run produced: its training record, its scores, and whether it diverged.

- `score_run`: samples timed (samples/s after a warm-up call), `genlab eval`'s metrics beside
  their floors, held-out bits/dim where the family has a likelihood, and the histogram of the
  samples over the evaluator's classes (labelled images) or the toy's modes.
- `divergence`: the rule that counts a run as diverged (stated in its docstring).
- `best_and_worst`: a family's seeds ranked by the primary metric (FD for images, MMD^2 for points).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genlab.data import load_dataset
from genlab.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from genlab.engine.evaluate import held_out_bits_per_dim
from genlab.engine.runs import CHECKPOINTS, load_run_model, read_run
from genlab.engine.text_eval import infill_scores, text_scores
from genlab.errors import DataError
from genlab.eval import toy as T
from genlab.eval.features import build_evaluator, single_thread
from genlab.eval.scores import (
    DEFAULT_MAX_REAL,
    FLOOR_SPLIT,
    IMAGE_METRICS,
    POINT_METRICS,
    REAL_SPLIT,
    evaluate_samples,
)
from genlab.experiments.compare.conclusions import PRIMARY_METRIC
from genlab.imageio import save_samples

if TYPE_CHECKING:
    from genlab.experiments.compare.settings import RunResult

SAMPLES_NPZ = "compare-samples.npz"  # the samples drawn for the report's pictures (64 images or every point)
SAMPLES_TXT = "compare-samples.txt"  # a text run's generated samples, for the report (separated by TEXT_SEPARATOR)
TEXT_SEPARATOR = "\n\n=====\n\n"
TEXT_GEN_N, TEXT_INFILL_N, TEXT_SHOWN = 16, 64, 3  # texts generated (timed), infill windows, texts shown
MIN_CLASSES = 3  # a run whose samples cover fewer classes (or toy modes) than this has collapsed
TIMING_SECONDS, TIMING_REPEATS = 1.0, 20  # sampling speed: repeat calls until this long (or this many)


def training_record(folder: Path, batch_size: int) -> dict:
    """Steps, images (text: tokens) seen and training seconds of a finished run, read from its newest checkpoint."""
    state = load_checkpoint(latest_checkpoint(folder / CHECKPOINTS))
    steps = int(state.get("global_step", 0))
    seconds = state.get("callbacks", {}).get("StopConditions", {}).get("train_seconds")
    seconds = None if seconds is None else float(seconds)
    _, info = read_run(folder)
    if info.modality != "tokens":
        return {"train_steps": steps, "images_seen": steps * batch_size, "train_seconds": seconds}
    tokens = steps * batch_size * info.shape[0]  # every window predicts seq_len tokens
    return {"train_steps": steps, "tokens_seen": tokens, "train_seconds": seconds,
            "train_tokens_per_s": tokens / seconds if seconds else None}


def training_started(folder: Path) -> bool:
    """Whether a run folder shows training steps (a checkpoint, or logged metrics)."""
    return bool(list_checkpoints(folder / CHECKPOINTS)) or (folder / "metrics.csv").is_file()


def loss_nan_count(folder: Path) -> int:
    """Rows of metrics.csv in which a logged training loss is NaN or infinite."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return 0
    bad = 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("train/") and value not in ("", None):
                    try:
                        bad += not math.isfinite(float(value))
                    except ValueError:
                        pass
    return bad


def score_run(folder: Path, n: int, nll_n: int, seed: int) -> dict:
    """Score a finished run: timed sampling of n samples (capped by the held-out split, as in `genlab
    eval`), `genlab eval`'s metrics, bits/dim of nll_n held-out examples, the class or mode histogram.

    Returns:
        {"status", "error", "metrics", "floor", "class_counts", "mode_counts", "likelihood", "likelihood_unit"}.
    """
    cfg, _ = read_run(folder)
    test, train = load_dataset(cfg.data, REAL_SPLIT), load_dataset(cfg.data, FLOOR_SPLIT)
    n = min(n, len(test), len(train), DEFAULT_MAX_REAL)
    model = load_run_model(folder)
    samples, per_second = timed_sample(model, n, seed)
    save_samples(samples[:64] if samples.dim() == 4 else samples, folder / SAMPLES_NPZ)
    out = {"status": "ok", "error": None, "metrics": {"samples_per_s": per_second,
                                                      "nfe": float(model.network_evaluations())},
           "floor": {}, "class_counts": None, "mode_counts": None, "n_scored": n,
           "likelihood": getattr(model, "LIKELIHOOD", None), "likelihood_unit": model.likelihood_unit}
    if not bool(torch.isfinite(samples).all()):
        return {**out, "status": "diverged", "error": "the samples hold NaN or inf"}
    try:
        result = evaluate_samples(samples, cfg.data, seed=seed)
    except DataError as err:
        return {**out, "status": "failed", "error": str(err)}
    out["metrics"].update({k: result[k] for k in (*IMAGE_METRICS, *POINT_METRICS) if k in result})
    out["floor"] = dict(result["floor"])
    out["class_counts"], out["mode_counts"] = sample_histograms(samples, train, test)
    if nll_n and hasattr(model, "log_likelihood"):
        out["metrics"]["nll_bpd"] = held_out_bits_per_dim(model, cfg.data, nll_n, seed)
    return out


def score_text_run(folder: Path, seed: int) -> dict:
    """Score a finished text run: the validation loss (`genlab eval`'s, a bound for MDLM), infill accuracy
    on TEXT_INFILL_N held-out windows per span length, and TEXT_GEN_N generated texts, timed (tokens/s).

    Returns:
        the same keys as `score_run`; metrics: bits_per_char, loss_per_token, perplexity,
        infill_exact_<span>, infill_token_acc_<span>, gen_tokens_per_s; plus "bound" and "infill_method".
    """
    cfg, _ = read_run(folder)
    model = load_run_model(folder)
    val = load_dataset(cfg.data, REAL_SPLIT, tokenizer=model.tokenizer)
    loss = text_scores(model, val, seed=seed)
    infill = infill_scores(model, val, n=TEXT_INFILL_N, seed=seed)
    samples, per_second = timed_sample(model, TEXT_GEN_N, seed)
    texts = [model.decode(row) for row in samples[:TEXT_SHOWN].tolist()]
    (folder / SAMPLES_TXT).write_text(TEXT_SEPARATOR.join(texts), encoding="utf-8")
    metrics = {k: loss[k] for k in ("bits_per_char", "loss_per_token", "perplexity")}
    for span, acc in infill["infill"].items():
        metrics[f"infill_exact_{span}"] = acc["exact_match"]
        metrics[f"infill_token_acc_{span}"] = acc["token_accuracy"]
    metrics["gen_tokens_per_s"] = per_second * samples.shape[1]  # texts/s x new tokens per text
    return {"status": "ok", "error": None, "metrics": metrics, "floor": {}, "class_counts": None, "mode_counts": None,
            "n_scored": TEXT_GEN_N, "likelihood": model.LIKELIHOOD, "likelihood_unit": model.likelihood_unit,
            "bound": bool(loss["bound"]), "infill_method": infill["infill_method"]}


def read_text_samples(folder: Path) -> list[str]:
    """The generated texts a compare run kept for the report ([] when there are none)."""
    try:
        return (Path(folder) / SAMPLES_TXT).read_text(encoding="utf-8").split(TEXT_SEPARATOR)
    except OSError:
        return []


def timed_sample(model, n: int, seed: int, **opts):
    """(n samples, samples per second) of `model.sample`: a small warm-up call, then timed calls of n
    samples, repeated (up to TIMING_REPEATS) until TIMING_SECONDS have passed, so that fast samplers
    are not timed from one call of a few milliseconds."""
    model.sample(min(n, 16), generator=torch.Generator().manual_seed(seed), **opts)
    calls, start = 0, time.perf_counter()
    while True:
        samples = model.sample(n, generator=torch.Generator().manual_seed(seed), **opts)
        calls += 1
        spent = time.perf_counter() - start
        if spent >= TIMING_SECONDS or calls >= TIMING_REPEATS:
            return samples, calls * n / max(spent, 1e-9)


def sample_histograms(samples, train, test) -> tuple[list | None, list | None]:
    """(samples per evaluator class, high-quality samples per toy mode); None where the data have neither."""
    if test.modality == "vector":
        if test.modes is None or test.mode_std is None:
            return None, None
        return None, [int(c) for c in T.mode_coverage(samples.float(), test.modes, test.mode_std).counts]
    if test.y is None:
        return None, None

    with single_thread():
        _, logits = build_evaluator(train, test, "auto").embed(samples.float())
    if logits is None:
        return None, None
    return [int(c) for c in logits.argmax(dim=1).bincount(minlength=logits.shape[1])], None


def covered(counts: list | None, share: float = 0.0, total: int | None = None) -> int | None:
    """How many classes (or modes) hold more than `share` of the samples (`total` of them; default the
    sum of the counts, which for toy modes holds only the high-quality samples)."""
    if not counts:
        return None
    total = total or sum(counts) or 1
    return sum(c / total > share for c in counts)


def divergence(result: RunResult, nan_rows: int, started: bool) -> str | None:
    """Why a run counts as diverged, or None: a NaN/inf loss, non-finite samples, samples covering fewer
    than MIN_CLASSES classes (or toy modes), or a failure after training `started` (a run that never
    trained, e.g. with a bad config, failed but did not diverge)."""
    if result.status != "ok":
        return (result.error or result.status) if started else None
    if nan_rows:
        return f"NaN/inf training loss in {nan_rows} logged step(s)"
    counts = result.class_counts if result.class_counts is not None else result.mode_counts
    # a class counts when it holds at least 1/(4K) of all the samples scored (a mode: of its
    # high-quality samples near it), so neither stray misclassifications nor a few samples that
    # land near a mode by chance cover it
    hit = covered(counts, 0.25 / len(counts), result.n_scored or None) if counts else None
    if hit is not None and hit < MIN_CLASSES:
        what = ("class", "classes") if result.class_counts is not None else ("mode", "modes")
        return f"covers only {hit} {what[hit != 1]}"
    return None


def best_and_worst(results: list[RunResult], family: str, kind: str) -> tuple[RunResult, RunResult] | None:
    """The scored runs of `family` with the lowest and the highest primary metric, or None if none scored."""
    metric = PRIMARY_METRIC[kind]
    scored = [r for r in results if r.family == family and r.status == "ok" and r.metrics.get(metric) is not None]
    if not scored:
        return None
    ranked = sorted(scored, key=lambda r: r.metrics[metric])
    return ranked[0], ranked[-1]
