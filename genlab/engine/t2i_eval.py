"""`genlab eval` on the two stages of latent text-to-image diffusion.

A text-to-image run (family t2i) is scored on prompts whose every attribute is known:
- prompt fidelity (genlab/eval/prompt_fidelity.py: the shapes attribute evaluator reads each image) on the
  standard evaluation prompts of the test split (single- and two-object) and of the held-out split (colour-shape
  pairs and two-object combinations never seen in training), per attribute and overall;
- FD (and the other image metrics) of the test-prompt images against the real test images, beside the
  real-vs-real floor (genlab/eval/scores.py). The evaluation prompts of the test split describe exactly its
  real scenes (`genlab.data.shapes.evaluation_prompts`), so the two sets are drawn from the same captions;
- a guidance sweep: fidelity and FD against the classifier-free guidance scale (the trade-off curve);
- samples/s of the main draw (wall clock on this machine, every denoiser call included);
- prompt sensitivity: at each noise level, how far the denoiser's prediction moves when one attribute of the
  prompt changes (`prompt_sensitivity`). Layout is decided at high noise, so a model whose prediction ignores
  the position words there places objects at random, whatever it does at low noise.

An autoencoder run (stage 1) is scored by the PSNR of its reconstructions of the test split and their FD.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from genlab.data import load_dataset
from genlab.data.captions import caption_ids
from genlab.data.shapes import PROMPT_ATTRIBUTES, contrast_prompts, evaluation_prompts
from genlab.diffusion.precond import precondition
from genlab.engine.runs import load_run_model, read_run
from genlab.errors import ConfigError
from genlab.eval.prompt_fidelity import score_prompt_fidelity
from genlab.eval.scores import REAL_SPLIT, evaluate_samples
from genlab.models.autoencoder import psnr
from genlab.models.base import eval_mode

#: guidance scales of the sweep (1 = the conditional model, no guidance)
DEFAULT_SWEEP = (1.0, 2.0, 3.0, 5.0, 7.5)
#: held-out prompts per test prompt in the main draw
HELDOUT_SHARE = 0.5
#: noise levels of the prompt-sensitivity probe, in units of the denoiser's sigma_data
SENSITIVITY_SIGMAS = (40.0, 10.0, 4.0, 2.0, 1.0, 0.4)


def _fidelity_summary(fidelity: dict) -> dict:
    """The overall fidelity of each prompt group ("single", "pair", "heldout", "all")."""
    return {g: fidelity[g]["overall"] for g in ("single", "pair", "heldout", "all") if g in fidelity}


def evaluate_t2i_run(run_dir, n: int = 500, sampler: str | None = None, steps: int | None = None, seed: int = 0, *,
                     guidance: float | None = None, sweep: tuple[float, ...] = DEFAULT_SWEEP, sweep_n: int = 200,
                     features: str = "auto", n_real: int | None = None) -> dict:
    """Score a t2i run: prompt fidelity, FD with its floor, a guidance sweep and samples/s (see the module doc).

    Args:
        n: test-split prompts of the main draw (plus n / 2 held-out prompts).
        guidance: the main draw's guidance scale (default: the run's `model.guidance`).
        sweep: guidance scales of the sweep (empty: none); sweep_n: test prompts per scale.
    """
    run_dir = Path(run_dir)
    cfg, _ = read_run(run_dir)
    model = load_run_model(run_dir, command="sample")
    opts = model.check_sample_options(sampler=sampler, steps=steps, guidance=guidance)
    g = opts.pop("guidance", model.spec.guidance)
    test_prompts = evaluation_prompts("test", n)
    held_prompts = evaluation_prompts("heldout", max(1, round(n * HELDOUT_SHARE)))
    prompts = test_prompts + held_prompts
    start = time.perf_counter()
    images = model.sample_prompts(prompts, generator=torch.Generator().manual_seed(seed), guidance=g, **opts)
    seconds = time.perf_counter() - start
    result = {
        "run": str(run_dir), "family": "t2i", "space": model.spec.space, "sampler": opts.get("sampler") or model.spec.sampler,
        "steps": opts.get("steps") or model.spec.steps, "guidance": g, "n_prompts": len(prompts),
        "samples_per_s": len(prompts) / seconds,
        "network_evaluations": model.network_evaluations(**opts) * (1 if g == 1.0 else 2),
        "fidelity": score_prompt_fidelity(images, prompts),
    }
    result["fd"] = evaluate_samples(images[: len(test_prompts)], cfg.data, n_real=n_real, seed=seed, features=features)
    result["guidance_sweep"] = [
        _sweep_point(model, cfg, scale, test_prompts[:sweep_n], seed, opts, features, n_real) for scale in sweep
    ]
    result["prompt_sensitivity"] = prompt_sensitivity(model, seed=seed)
    return result


@torch.no_grad()
def prompt_sensitivity(model, sigmas: tuple[float, ...] = SENSITIVITY_SIGMAS, pairs: int = 32, seed: int = 0,
                       ema: bool = True) -> dict:
    """How much the denoiser reads each attribute of a prompt, at each noise level.

    For each attribute, `pairs` single-object prompts that differ in it alone (`contrast_prompts`) are
    denoised from the same noisy input x = sigma * noise (pure noise at the high levels, where layout is
    decided), and the RMS difference of the two predictions D(x; sigma, prompt) is reported in units of
    sigma_data (the data's std in the denoiser's space): 0 means the model ignores the attribute at that
    noise level. The input holds no image, so the low levels are off the data: read them as "does the
    prompt still act here", not as what the model does to a nearly clean image.

    Returns:
        {"sigmas": the levels (absolute), attribute: [RMS difference / sigma_data per level]}.
    """
    net = model.sampling_net(ema)
    sigma_data = float(getattr(model.precond, "sigma_data", None)
                       or (model.latent_scale if model.autoencoder is not None else model.info.std))  # vp: the data std
    g = torch.Generator().manual_seed(seed)
    result = {"sigmas": [s * sigma_data for s in sigmas]}
    with eval_mode(net):
        for i, attribute in enumerate(PROMPT_ATTRIBUTES):
            a, b = zip(*contrast_prompts(attribute, pairs, seed + i), strict=True)
            ids = caption_ids(model.tokenizer, [*a, *b], model.spec.text.max_len).to(model.device)
            moved = []
            for sigma in result["sigmas"]:
                x = (torch.randn((pairs, *model.model_shape), generator=g) * sigma).to(model.device).repeat(2, 1, 1, 1)
                d = precondition(net, model.precond, x, torch.full((2 * pairs,), sigma, device=model.device), ids).float()
                moved.append(float((d[:pairs] - d[pairs:]).pow(2).mean().sqrt()) / sigma_data)
            result[attribute] = moved
    return result


def _sweep_point(model, cfg, scale: float, prompts: list[str], seed: int, opts: dict, features: str,
                 n_real: int | None) -> dict:
    """Fidelity and FD of `prompts` at guidance `scale`."""
    images = model.sample_prompts(prompts, generator=torch.Generator().manual_seed(seed), guidance=scale, **opts)
    fd = evaluate_samples(images, cfg.data, n_real=n_real, seed=seed, features=features)
    return {"guidance": scale, "n": len(prompts), **{f"fidelity_{k}": v for k, v in
                                                     _fidelity_summary(score_prompt_fidelity(images, prompts)).items()},
            "fd": fd["fd"], "floor_fd": fd["floor"]["fd"]}


def evaluate_autoencoder_run(run_dir, n: int = 2000, seed: int = 0, *, features: str = "auto",
                             n_real: int | None = None) -> dict:
    """Stage 1: PSNR (dB) of the reconstructions of n test images, and their FD against the real test split."""
    run_dir = Path(run_dir)
    cfg, _ = read_run(run_dir)
    model = load_run_model(run_dir)
    test = load_dataset(cfg.data, REAL_SPLIT)
    x = test.x[:n]
    recon = model.reconstruct(x)
    result = {"run": str(run_dir), "family": "autoencoder", "n": len(x),
              "reconstruction_psnr": float(psnr(x, recon).mean())}
    result["reconstruction_fd"] = evaluate_samples(recon, cfg.data, n_real=n_real, seed=seed, features=features)
    return result


def check_t2i_options(family: str, **given) -> None:
    """Refuse the text-to-image evaluation options for a run of another family."""
    extra = [name for name, value in given.items() if value is not None]
    if family != "t2i" and extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise ConfigError(f"{flags} apply to text-to-image runs (family t2i); this run's family is {family}")
