"""Score a run: draw samples from its checkpoint, score them with `genlab.eval`, keep `eval.csv`.

The metrics themselves (tensors in, numbers out, each beside its real-vs-real floor) live in
`genlab.eval.scores`; this module runs the model and writes the run folder's record.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.data import DataSpec, load_dataset
from genlab.data.shapes import NAME as SHAPES_NAME
from genlab.data.toys import TOYS
from genlab.engine.memory import check_sample_memory
from genlab.engine.runs import SAMPLES, load_run_model, read_run
from genlab.engine.t2i_eval import (
    DEFAULT_SWEEP,
    check_t2i_options,
    evaluate_autoencoder_run,
    evaluate_t2i_run,
)
from genlab.engine.text_eval import evaluate_text_run
from genlab.errors import ConfigError, DataError
from genlab.eval import toy as T
from genlab.eval.features import check_features_mode
from genlab.eval.prompt_fidelity import (
    check_prompts,
    read_prompts,
    score_prompt_fidelity,
)
from genlab.eval.scores import (
    DEFAULT_MAX_REAL,
    FLOOR_SPLIT,
    REAL_SPLIT,
    evaluate_samples,
)
from genlab.imageio import save_samples
from genlab.safepaths import check_run_links

EVAL_CSV = "eval.csv"


def evaluate_run(
    run_dir: str | os.PathLike,
    n: int = 2000,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    features: str = "auto",
    n_real: int | None = None,
    plot: bool = True,
    nll_n: int = 100,
) -> dict:
    """Draw n samples from a run's latest checkpoint and score them with `evaluate_samples`.

    Args:
        run_dir: a run folder written by `genlab train`.
        n: most samples to draw; only m = min(n, test split, train split, n_real) are scored, so
            no more than m are drawn (see the module doc).
        sampler, steps: sampler name and step count (default: the run's).
        seed: seeds sampling and the evaluation draws.
        features, n_real: passed to `evaluate_samples`.
        plot: also write `<run>/samples/eval-seed<seed>.png` (grid or scatter over the test points).
        nll_n: held-out examples whose likelihood is measured (`nll_bpd`, bits/dim) when the family
            defines `log_likelihood`; 0 skips it.

    Returns:
        `evaluate_samples`' dict plus "run", "sampler", "steps" and "plot" (the PNG path or None).
    """
    run_dir = Path(run_dir)
    cfg, _ = read_run(run_dir)
    # only m = min(n, test, train, n_real) samples are scored: draw no more than that
    limit = DEFAULT_MAX_REAL if n_real is None else n_real
    n = min(n, len(load_dataset(cfg.data, REAL_SPLIT)), len(load_dataset(cfg.data, FLOOR_SPLIT)), limit)
    model = load_run_model(run_dir)
    opts = model.check_sample_options(sampler=sampler, steps=steps)
    with torch.no_grad():
        samples = model.sample(n, generator=torch.Generator().manual_seed(seed), **opts)
    result = evaluate_samples(samples, cfg.data, n_real=n_real, seed=seed, features=features)
    result.update(run=str(run_dir), sampler=sampler, steps=steps, plot=None)
    if nll_n and hasattr(model, "log_likelihood"):
        result["nll_bpd"], se = held_out_bits_per_dim(model, cfg.data, nll_n, seed, with_stderr=True)
        if se is not None:
            result["nll_bpd_se"] = se
    if plot:
        result["plot"] = str(write_plot(samples, cfg.data, run_dir / SAMPLES / f"eval-seed{seed}.png"))
    return result


def held_out_bits_per_dim(model, data: DataSpec, n: int, seed: int = 0, with_stderr: bool = False):
    """Mean negative log-likelihood in bits/dim of the first n held-out examples under `model`.

    Images are scored as 8-bit pixels (each family quantises them with genlab.diffusion.pixels);
    vectors report the continuous density's bits/dim (which can be negative).

    With `with_stderr`, returns (mean, se): se is the Monte-Carlo standard error of the mean from the
    family's Hutchinson probes, sqrt(sum_i se_i^2) / n (independent probes per example), or None when
    the family's log_likelihood reports none.
    """
    test = load_dataset(data, REAL_SPLIT)
    x = test.x[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]
    values, stderr = model.log_likelihood_estimate(x, generator=torch.Generator().manual_seed(seed))
    mean = float(values.mean())
    if not with_stderr:
        return mean
    return mean, None if stderr is None else float(stderr.square().sum().sqrt() / len(x))


def write_plot(samples: Tensor, data: DataSpec, path: Path) -> Path:
    """A PNG of the samples: an image grid of the first 64, or a scatter over the test points."""
    if samples.dim() == 2:
        return T.save_scatter(samples, path, reference=load_dataset(data, REAL_SPLIT).x)
    return save_samples(samples[:64], path)


def flatten(row: dict, prefix: str = "") -> dict:
    """Nested dicts to one level with "_"-joined keys: {"floor": {"fd": 1}} -> {"floor_fd": 1}."""
    flat: dict = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def _csv_text(columns: list[str], rows: list[dict], header: bool) -> str:
    """CSV text of `rows` under `columns` (missing values empty), with the header line when asked."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="raise", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def drop_training_rows_after(run_dir: str | os.PathLike, step: int) -> int:
    """Drop the rows of `<run>/eval.csv` that the trainer wrote (they have `train_seconds`) after `step`.

    A resumed run restarts from its checkpoint at `step` and evaluates those steps again; rows
    a killed process wrote past it would otherwise appear twice. Rows of `genlab eval` (no
    `train_seconds`) are kept. The file is rewritten atomically. Returns the number dropped.
    """
    path = Path(run_dir) / EVAL_CSV
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns, rows = list(reader.fieldnames or []), list(reader)

    def later(row: dict) -> bool:
        return bool(row.get("train_seconds")) and str(row.get("step", "")).isdigit() and int(row["step"]) > step

    kept = [row for row in rows if not later(row)]
    if len(kept) < len(rows):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(_csv_text(columns, kept, header=True), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return len(rows) - len(kept)


def _cell(value) -> object:
    """A CSV cell: floats at full precision, None as empty, everything else as is."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


def append_metrics_csv(run_dir: str | os.PathLike, row: dict) -> Path:
    """Append one evaluation to `<run>/eval.csv` (nested dicts flattened), adding a UTC timestamp.

    The file has a header line. A row with the same columns is appended with one write (so
    concurrent appends interleave whole lines); a row with new columns rewrites the file
    atomically with the union of columns, earlier rows keeping empty cells for the new ones.

    Returns:
        The CSV path.
    """
    path = Path(run_dir) / EVAL_CSV
    flat = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), **flatten(row)}
    flat = {key: _cell(value) for key, value in flat.items()}
    columns: list[str] = []
    old_rows: list[dict] = []
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            if set(flat) - set(columns):
                old_rows = list(reader)
    if columns and not set(flat) - set(columns):
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(_csv_text(columns, [flat], header=False))
        return path
    columns = columns + [key for key in flat if key not in columns]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(_csv_text(columns, [*old_rows, flat], header=True), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_samples_npz(path: str | Path):
    """The array `samples` of an .npz file, as a float32 tensor.

    Raises:
        DataError: missing or unreadable file, not an .npz, no `samples` array, or a non-numeric array.
    """
    # What a damaged .npz raises: besides the obvious, a zip that claims an unsupported version or
    # compression (NotImplementedError), encryption (RuntimeError) or corrupt deflate data (zlib.error),
    # found by fuzzing.
    bad_npz = (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error)
    path = Path(path)
    fix = "write one with `genlab sample RUN --out FILE.npz` or numpy.savez(FILE, samples=x)"
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist; {fix}")
    try:
        npz = np.load(path, allow_pickle=False)
    except bad_npz as err:
        raise DataError(f"cannot read {path} as .npz ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array
        raise DataError(f"{path} is not an .npz archive; {fix}")
    with npz:
        if "samples" not in npz.files:
            found = ", ".join(npz.files) or "no arrays"
            raise DataError(f"{path} has no array named 'samples' (found: {found}); {fix}")
        try:
            array = npz["samples"]
        except bad_npz as err:
            raise DataError(f"cannot read array 'samples' of {path} ({type(err).__name__}: {err}); {fix}") from None
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: array 'samples' has dtype {array.dtype}; it must hold numbers")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def spec_for_samples(name: str, samples):
    """A DataSpec for dataset `name` matching the samples' image size (so digits at 8 px or 32 px works)."""
    resolution = None
    if name not in TOYS and samples.dim() == 4 and samples.shape[-1] == samples.shape[-2]:
        resolution = int(samples.shape[-1])
    return DataSpec(name=name, resolution=resolution)


def evaluate(run: str | os.PathLike | None = None, *, real: str | None = None, samples_file=None, n: int = 2000,
             sampler: str | None = None, steps: int | None = None, seed: int = 0, features: str = "auto",
             n_real: int | None = None, nll_n: int = 100, infill_n: int = 64, reference=None,
             gen_n: int = 64, prompts_file=None, guidance: float | None = None,
             guidance_sweep: tuple[float, ...] | None = None, sweep_n: int = 200) -> dict:
    """`genlab eval`: score a run (samples drawn now, or given in `samples_file`) or a file of samples
    against dataset `real`; a run's result is appended to its eval.csv (key "eval_csv"). A text run is
    scored by its validation loss and, on `infill_n` held-out windows, its infill accuracy; with a
    `reference` GPT run, `gen_n` samples' generative perplexity beside their unigram entropy and
    distinct-n (genlab/engine/text_eval.py). With `prompts_file` (one prompt per sample, shapes only), the
    samples' prompt fidelity is added under "fidelity" (genlab/eval/prompt_fidelity.py). A text-to-image run is
    scored by prompt fidelity, FD and a `guidance_sweep` of `sweep_n` prompts per scale, an autoencoder run by its
    reconstructions (genlab/engine/t2i_eval.py).

    Raises:
        ConfigError: contradictory or incomplete arguments, or an unknown `features` choice.
        DataError / CheckpointError: unreadable samples or run.
    """
    if run and real:
        raise ConfigError("give either RUN_DIR or --real DATA, not both")
    if not run and not real:
        raise ConfigError("give a RUN_DIR, or --real DATA --samples FILE.npz")
    if prompts_file and not samples_file:
        raise ConfigError("--prompts scores the samples of --samples FILE.npz against their prompts; give both")
    if real and not samples_file:
        raise ConfigError("--real DATA needs --samples FILE.npz (the samples to score)")
    if samples_file and (sampler or steps):
        raise ConfigError("--sampler/--steps draw new samples from a run; drop them when giving --samples FILE.npz")
    if run:  # eval.csv and samples/eval-*.png are written into the run folder
        check_run_links(run)
    if run and read_run(Path(run))[1].modality == "tokens":  # a language model: its validation loss
        if samples_file or sampler or steps:
            raise ConfigError("a text run is scored by its loss on the validation split; drop --samples, --sampler "
                              "and --steps")
        result = evaluate_text_run(run, seed=seed, infill_n=infill_n, reference=reference, gen_n=gen_n)
        result["eval_csv"] = str(append_metrics_csv(run, result))
        return result
    if reference is not None:
        raise ConfigError("--reference scores the samples of a text run; drop it for this run")
    check_features_mode(features)
    family = read_run(Path(run))[0].family if run else None
    check_t2i_options(family, guidance=guidance, guidance_sweep=guidance_sweep)
    if family in ("t2i", "autoencoder") and not samples_file:
        if family == "t2i":
            result = evaluate_t2i_run(run, n, sampler, steps, seed, guidance=guidance, features=features,
                                      sweep=DEFAULT_SWEEP if guidance_sweep is None else guidance_sweep,
                                      sweep_n=sweep_n, n_real=n_real)
        else:
            result = evaluate_autoencoder_run(run, n, seed, features=features, n_real=n_real)
        result["eval_csv"] = str(append_metrics_csv(run, result))
        return result
    common = {"n_real": n_real, "seed": seed, "features": features}
    if samples_file:
        samples = load_samples_npz(samples_file)
        data = spec_for_samples(real, samples) if real else read_run(Path(run))[0].data
        prompts = None
        if prompts_file:  # checked before any scoring: a bad prompt fails in a second, not after FD
            if data.name != SHAPES_NAME:
                raise ConfigError(f"--prompts is scored by the {SHAPES_NAME} attribute evaluator, but the samples "
                                  f"imitate {data.name}; use --real {SHAPES_NAME}")
            prompts = check_prompts(read_prompts(prompts_file), len(samples))
        result = evaluate_samples(samples, data, **common)
        if run:
            result["run"] = str(run)
        result["samples_file"] = str(samples_file)
        if prompts is not None:
            result["fidelity"] = score_prompt_fidelity(samples, prompts)
            result["prompts_file"] = str(prompts_file)
    else:
        check_sample_memory(n, read_run(Path(run))[1].shape, flag="--n")
        result = evaluate_run(run, n, sampler, steps, seed, features=features, n_real=n_real, nll_n=nll_n)
    if run:
        result["eval_csv"] = str(append_metrics_csv(run, result))
    return result
