"""Prompt fidelity on `shapes`: does each generated image show what its prompt asks for?

Each prompt is parsed back into its attributes (`genlab.data.shape_captions.parse_caption`), each
image is read by the attribute evaluator (`genlab.eval.shapes_attrs`), and the two are compared:

- a single-object prompt ("a large red circle at the top left"): `count` (exactly one object),
  `shape`, `colour`, `size` (when the prompt states one) and `position` (its grid cell), each
  checked on the detected object that matches the prompt best;
- a two-object prompt ("a red circle to the left of a blue square"): `count` (exactly two),
  `shape` and `colour` and `size` (right for both objects), and `relation` (the first object's
  cell strictly left of / right of / above / below the second's), checked on the assignment of
  two detected objects to the prompt's two that matches best.

`overall` is the share of prompts with every checked attribute right. Results are reported
separately for single-object and two-object prompts without a held-out combination, and for the
prompts with one (`heldout_single`, `heldout_pair`, and both together as `heldout`), since those
measure compositional generalisation (see `genlab.data.shapes.HELDOUT_PAIRS`).
"""

from __future__ import annotations

import os
from itertools import permutations
from pathlib import Path

import numpy as np
from torch import Tensor

from genlab.data.shape_captions import POSITIONS, PromptSpec, parse_caption
from genlab.data.shapes import kinds_heldout
from genlab.errors import DataError, printable
from genlab.eval.shapes_attrs import (
    Detected,
    ShapesAttributeEvaluator,
    shapes_attribute_evaluator,
)

SINGLE_ATTRIBUTES = ("count", "shape", "colour", "size", "position")
PAIR_ATTRIBUTES = ("count", "shape", "colour", "size", "relation")
GROUPS = ("single", "pair", "heldout_single", "heldout_pair", "heldout", "all")
MAX_PROMPTS_FILE_BYTES = 64 * 1024 * 1024


def _cell(position: str) -> tuple[int, int]:
    return divmod(POSITIONS.index(position), 3)


def relation_holds(relation: str, a: str, b: str) -> bool:
    """True when the object in cell `a` is strictly `relation` the object in cell `b`."""
    (ra, ca), (rb, cb) = _cell(a), _cell(b)
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def _object_checks(spec, det: Detected) -> dict[str, bool]:
    checks = {"shape": det.shape == spec.shape, "colour": det.colour == spec.colour}
    if spec.size is not None:
        checks["size"] = det.size == spec.size
    return checks


def score_prompt(prompt: PromptSpec, detected: list[Detected]) -> dict[str, bool]:
    """Which checked attributes of `prompt` the detected objects of one image get right (see the module doc)."""
    if prompt.kind == "single":
        (spec,) = prompt.objects
        wrong = {"count": False, "shape": False, "colour": False, "position": False}
        if spec.size is not None:
            wrong["size"] = False
        if not detected:
            return wrong

        def checks_of(det: Detected) -> dict[str, bool]:
            return {**_object_checks(spec, det), "position": det.position == spec.position}

        best = max(detected, key=lambda d: sum(checks_of(d).values()))  # max keeps the first (most confident) tie
        return {"count": len(detected) == 1, **checks_of(best)}
    a, b = prompt.objects
    wrong = {"count": False, "shape": False, "colour": False, "relation": False}
    if a.size is not None or b.size is not None:
        wrong["size"] = False
    if len(detected) < 2:
        return wrong
    best_score, best = -1, wrong
    for da, db in permutations(detected, 2):
        ca, cb = _object_checks(a, da), _object_checks(b, db)
        checks = {"count": len(detected) == 2, "shape": ca["shape"] and cb["shape"],
                  "colour": ca["colour"] and cb["colour"], "relation": relation_holds(prompt.relation, da.position,
                                                                                     db.position)}
        if "size" in wrong:
            checks["size"] = ca.get("size", True) and cb.get("size", True)
        score = sum(ca.values()) + sum(cb.values()) + checks["relation"]
        if score > best_score:
            best_score, best = score, checks
    return best


def prompt_group(prompt: PromptSpec) -> str:
    """"single", "pair", "heldout_single" or "heldout_pair"."""
    held = kinds_heldout([(o.colour, o.shape) for o in prompt.objects])
    return ("heldout_" if held else "") + prompt.kind


def prompt_fidelity(detected: list[list[Detected]], prompts: list[str]) -> dict:
    """Per-attribute and overall accuracy of detections against prompts, per group of prompts.

    Args:
        detected: per image, the objects the evaluator read (`ShapesAttributeEvaluator.detect`).
        prompts: the prompt of each image.

    Returns:
        {group: {"n": prompts, "overall": share with every attribute right, attribute: accuracy
        over the prompts that check it}} for each group of GROUPS holding prompts.

    Raises:
        DataError: a prompt outside the grammar, or counts that differ.
    """
    if len(detected) != len(prompts):
        raise DataError(f"{len(prompts)} prompts for {len(detected)} images; give one prompt per image")
    rows: dict[str, list[dict[str, bool]]] = {g: [] for g in GROUPS}
    for text, dets in zip(prompts, detected, strict=True):
        prompt = parse_caption(text)
        checks = score_prompt(prompt, dets)
        group = prompt_group(prompt)
        for g in (group, *(("heldout",) if group.startswith("heldout") else ()), "all"):
            rows[g].append(checks)
    out = {}
    for group, checks in rows.items():
        if not checks:
            continue
        names = [a for a in dict.fromkeys((*SINGLE_ATTRIBUTES, *PAIR_ATTRIBUTES)) if any(a in c for c in checks)]
        out[group] = {"n": len(checks), "overall": float(np.mean([all(c.values()) for c in checks])),
                      **{a: float(np.mean([c[a] for c in checks if a in c])) for a in names}}
    return out


def score_prompt_fidelity(images: Tensor, prompts: list[str], evaluator: ShapesAttributeEvaluator | None = None,
                          root=None) -> dict:
    """Score a text-to-image model's images against their prompts: `prompt_fidelity` plus the evaluator.

    Args:
        images: (N, 3, 32, 32) float in [-1, 1], image i drawn for prompts[i].
        prompts: N prompts in the shapes grammar.
        evaluator: the attribute evaluator (default: the cached one, trained on first use).
        root: evaluator cache root (default `genlab.eval.cache.cache_root()`).

    Returns:
        {group: {...}} as `prompt_fidelity`, plus "evaluator": {"name", "sha256", "scene_accuracy"
        {"test", "heldout"}} (its exact-scene accuracy on real images: the ceiling of fidelity).

    Raises:
        DataError: images of the wrong shape, a count mismatch, or a prompt outside the grammar.
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise DataError(f"prompt fidelity needs (N, 3, 32, 32) images in [-1, 1], got shape {tuple(images.shape)}")
    check_prompts(prompts, len(images))  # bad prompts fail before the evaluator is built or trained
    evaluator = evaluator or shapes_attribute_evaluator(root=root)
    result = prompt_fidelity(evaluator.detect(images.float().clamp(-1, 1)), list(prompts))
    result["evaluator"] = {"name": evaluator.name, "sha256": evaluator.weights_sha256,
                           "scene_accuracy": evaluator.accuracy}
    return result


def check_prompts(prompts: list[str], n: int) -> list[str]:
    """`prompts` themselves once they are n and all parse; else a DataError naming the problem."""
    if len(prompts) != n or n == 0:
        raise DataError(f"{len(prompts)} prompts for {n} images; give one prompt per image, in order (at least one)")
    for i, text in enumerate(prompts):
        try:
            parse_caption(text)
        except DataError as err:
            raise DataError(f"prompt {i + 1}: {err}") from None
    return list(prompts)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one per line (line i is the prompt of sample i); blank lines are an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {printable(path)} does not exist; write one prompt per line, one per sample")
    if path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
        raise DataError(f"prompts file {printable(path)} is over {MAX_PROMPTS_FILE_BYTES // 2**20} MiB")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"prompts file {printable(path)} is not UTF-8 text ({err.reason})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise DataError(f"prompts file {printable(path)} has blank line(s) {blank[:5]}; write one prompt per sample")
    if not lines:
        raise DataError(f"prompts file {printable(path)} holds no prompts")
    return [line.strip() for line in lines]
