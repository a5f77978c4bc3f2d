"""What one request of the playground draws: its bounds, the drawing itself (with progress and cancel),
and the PNG it is downloaded as (generation parameters in the PNG's text chunks).

The form's options are the run family's declarations (`genlab.models.specs.FAMILY_SAMPLE_OPTIONS`),
checked by the same `SampleOption.check` as `genlab sample`'s flags; the server adds its own upper
bounds (`Limits`) so that one request cannot occupy the machine for hours.
"""

from __future__ import annotations

import io
import json
import math
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genlab.diffusion.samplers import SAMPLERS
from genlab.engine.textgen import generate_text, infill_text
from genlab.errors import ConfigError, unknown_name_error
from genlab.imageio import sample_picture
from genlab.models.options import SampleOption, options_by_name
from genlab.models.specs import FAMILY_SAMPLE_OPTIONS, TEXT_FAMILIES


@dataclass(frozen=True)
class Limits:
    """Upper bounds of one request (each refused with a message naming it)."""

    max_n: int = 64  # samples (or texts) per request
    max_steps: int = 250  # sampling steps, Gibbs sweeps or denoising steps
    max_new_tokens: int = 512
    max_prompt_chars: int = 2000  # a prompt or an infill template
    max_values: int = 64 * 3 * 64 * 64  # numbers drawn per request: n times the data's dimension
    max_axis_values: int = 4  # values on one axis of a compare grid


#: samples per network batch: `genlab sample`'s default --batch-size, so that a served result (n <= max_n) is
#: drawn in one batch, as the command line draws it
SAMPLE_BATCH = 256


class Cancelled(Exception):
    """The job was cancelled while it ran (raised from the sampler's callback)."""


def form_options(family: str, default_spec: dict | None = None) -> list[dict]:
    """The family's sampling options as a form shows them: name, type, help, choices, bounds, default."""
    out = []
    for o in FAMILY_SAMPLE_OPTIONS.get(family, ()):
        choices = list(o.choices) or (sorted(SAMPLERS) if family == "diffusion" and o.name == "sampler" else [])
        out.append({"name": o.name, "type": o.type.__name__, "help": o.help, "flag": o.cli_flag, "choices": choices,
                    "minimum": o.minimum, "maximum": o.maximum, "exclusive_minimum": o.exclusive_minimum,
                    "default": (default_spec or {}).get(o.name)})
    return out


def check_options(family: str, options: dict, limits: Limits) -> dict:
    """The options given (None and "" dropped), checked against the family's declaration and the limits.

    Raises:
        ConfigError: an option the family does not declare, a value of the wrong type or out of range.
    """
    declared: dict[str, SampleOption] = options_by_name(FAMILY_SAMPLE_OPTIONS.get(family, ()))
    checked = {}
    for name, value in options.items():
        if value is None or value == "":
            continue
        if name not in declared:
            have = ", ".join(declared) or "none"
            raise ConfigError(f"option {name!r} does not apply to the {family} family (its options: {have})")
        checked[name] = declared[name].check(value)
        if family == "diffusion" and name == "sampler" and checked[name] not in SAMPLERS:
            raise unknown_name_error("sampler", checked[name], SAMPLERS, ConfigError)
    bounds = {"steps": limits.max_steps, "max_new_tokens": limits.max_new_tokens}
    for name, bound in bounds.items():
        if name in checked and checked[name] > bound:
            raise ConfigError(f"{name}={checked[name]} is over this server's limit of {bound}; ask for fewer")
    if len(checked.get("prompt", "")) > limits.max_prompt_chars:
        raise ConfigError(f"the prompt has {len(checked['prompt'])} characters, over this server's limit of "
                          f"{limits.max_prompt_chars}; shorten it")
    return checked


def check_size(n: int, shape, limits: Limits) -> None:
    """Refuse more samples than the limits allow (n, and n times the data's dimension)."""
    if not 1 <= n <= limits.max_n:
        raise ConfigError(f"n={n} must be between 1 and {limits.max_n}; ask for fewer samples")
    dim = math.prod(shape or (1,))
    if n * dim > limits.max_values:
        raise ConfigError(f"n={n} samples of shape {tuple(shape)} are {n * dim} numbers, over this server's limit "
                          f"of {limits.max_values}; ask for at most {limits.max_values // dim}")


def check_template(text: str, limits: Limits) -> str:
    """An infill template within the length limit."""
    if len(text) > limits.max_prompt_chars:
        raise ConfigError(f"the infill text has {len(text)} characters, over this server's limit of "
                          f"{limits.max_prompt_chars}; shorten it")
    return text


def picture(samples: torch.Tensor) -> Image.Image:
    """Samples (or a preview of predicted x0) as `genlab sample` draws them (`genlab.imageio.sample_picture`)."""
    return sample_picture(samples.float().clamp(-1, 1) if samples.ndim == 4 else samples.float())


def png_bytes(image: Image.Image, params: dict | None = None) -> bytes:
    """PNG bytes of `image`, with `params` in its text chunks: "genlab" (JSON) and "parameters" (the command)."""
    info = PngInfo()
    if params is not None:
        info.add_text("genlab", json.dumps(params, sort_keys=True))
        if params.get("command"):
            info.add_text("parameters", params["command"])
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def reproduce_command(family: str, run_dir: Path, n: int, seed: int, options: dict, text: str | None = None) -> str:
    """The `genlab sample` / `generate` / `infill` command line that draws the same result."""
    flags = {o.name: o.cli_flag for o in FAMILY_SAMPLE_OPTIONS.get(family, ())}
    if text is not None:
        argv = ["genlab", "infill", str(run_dir), "--text", text, "--seed", str(seed)]
        argv += ["--steps", str(options["steps"])] if "steps" in options else []
        return shlex.join(argv)
    command = "generate" if family in TEXT_FAMILIES else "sample"
    argv = ["genlab", command, str(run_dir), "-n", str(n), "--seed", str(seed)]
    for name, value in options.items():
        argv += [flags[name], str(value)]
    return shlex.join(argv + ([] if command == "generate" else ["--out", "samples.png"]))


@dataclass
class Drawn:
    """What a request drew: a picture (images, points) or texts, and the parameters that reproduce it."""

    params: dict
    image: Image.Image | None = None
    texts: list[str] | None = None


#: progress(fraction done in [0, 1], preview picture or None); called from the worker thread
Progress = Callable[[float, Image.Image | None], None]


def draw(model, run_id: str, run_dir: Path, *, n: int, seed: int, options: dict, text: str | None,
         progress: Progress, cancelled: Callable[[], bool], previews: int = 8) -> Drawn:
    """Draw from a loaded run model, reporting progress (diffusion: `previews` predicted-x0 pictures).

    Seeded as `genlab sample` is (one generator, one batch of n), so the command in `params` draws the
    same samples; a preview never changes them (the callback only reads).

    Raises:
        Cancelled: `cancelled()` became true during a diffusion sampler's steps.
        ConfigError, DataError: the model refuses an option (a class of an unconditional model, ...).
    """
    family = model.FAMILY
    params = {"run": run_id, "family": family, "n": n, "seed": seed, "options": options,
              "command": reproduce_command(family, run_dir, n, seed, options, text)}
    if text is not None:
        params["text"] = text
        if family != "mdlm":
            raise ConfigError(f"infill needs a masked-diffusion text run (mdlm), but {run_id} is {family}; "
                              f"generate from a prompt instead")
        result = infill_text(run_dir, text, steps=options.get("steps"), seed=seed, model=model)
        progress(1.0, None)
        return Drawn(params, texts=[result["text"]])
    if family in TEXT_FAMILIES:
        result = generate_text(run_dir, n=n, seed=seed, model=model, **options)
        progress(1.0, None)
        return Drawn(params, texts=result["texts"])
    opts = model.check_sample_options(**options)
    extra = {}
    if family == "diffusion":
        total = len(model.sampling_sigmas(opts.get("sampler") or model.spec.sampler,
                                          opts.get("steps") or model.spec.steps)) - 1
        every = max(1, total // previews)

        def callback(state: dict) -> None:
            if cancelled():
                raise Cancelled()
            i = state["i"] + 1
            preview = picture(state["denoised"].cpu()) if i % every == 0 or i == total else None
            progress(min(1.0, i / total), preview)

        extra["callback"] = callback
    if cancelled():
        raise Cancelled()
    samples = model.sample(n, generator=torch.Generator().manual_seed(seed), batch_size=SAMPLE_BATCH, **opts,
                           **extra)
    if cancelled():
        raise Cancelled()
    progress(1.0, None)
    return Drawn(params, image=picture(samples))


def limits_json(limits: Limits) -> dict:
    """The limits as the page shows them."""
    return asdict(limits)
