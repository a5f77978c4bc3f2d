"""The built-in `shapes` dataset: 32x32 RGB images of one or two flat shapes on black, with captions.

Every example is a pure function of (seed, index, split) (:func:`render_example`): a numpy
generator seeded with all three draws the scene (shapes, saturated colours, sizes, cells of a
3x3 grid, jitter of position, size and rotation) and its caption (a random template and
synonyms, see `genlab.data.shape_captions`). Shapes are drawn with Pillow at SUPERSAMPLE times
the resolution and box-filtered down, so an edge pixel holds the shape's coverage
(anti-aliasing).

Splits: "train", "val" and "test" are independent streams of scenes that never contain a
held-out combination (a (colour, shape) pair of HELDOUT_PAIRS, or two objects forming one of
HELDOUT_COMBOS); "heldout" holds only scenes with one, to measure compositional generalisation.

A two-object scene puts its objects in one row ("to the left of" / "to the right of") or one
column ("above" / "below"), so its caption's relation is the only one that holds.

Through the registry (`load_dataset(DataSpec(name="shapes"), split)`) the dataset is class-labelled
images: the label is the shape (or the shape and colour, `data.label: shape_colour`) of the first
object the caption names; `TensorData.captions` holds the captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from genlab.data.base import SPLIT_SEED, DataSpec, TensorData
from genlab.data.digits import resize_images
from genlab.data.shape_captions import (
    COLOURS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    CaptionTokenizer,
    ObjectSpec,
    PromptSpec,
    max_caption_words,
    parse_caption,
    write_caption,
)
from genlab.errors import DataError

# The caption grammar's names are re-exported: this module is the dataset's one public face.
__all__ = ["COLOURS", "POSITIONS", "RELATIONS", "SHAPES", "SIZES", "SPLITS", "CaptionTokenizer", "ObjectSpec",
           "PromptSpec", "ShapeObject", "ShapesExample", "evaluation_prompts", "is_heldout", "load_shapes",
           "max_caption_words", "parse_caption", "render_example", "render_objects", "shapes_data"]

NAME = "shapes"  # the registry name
RESOLUTION = 32
SUPERSAMPLE = 4  # draw at 4x, box-filter down: each pixel is the mean of 16 sub-pixel samples
GRID = 3
CELL = RESOLUTION / GRID
#: object scale r (px) per size: a circle's radius; a square's half-side is SQUARE_HALF_SIDE * r, a
#: triangle's circumradius TRIANGLE_RADIUS * r. The gap between the ranges keeps size unambiguous.
SIZE_RANGES = {"small": (2.6, 3.1), "large": (4.0, 4.6)}
SQUARE_HALF_SIDE = 0.88
TRIANGLE_RADIUS = 1.3
JITTER = 0.75  # largest offset (px) of an object's centre from its cell's centre, per axis
#: largest turn (rad) of a polygon away from its upright pose (a square's sides level, a triangle's apex up).
#: A jitter, not a free rotation: a square turned by up to 45 degrees is a round blob at 4 px, and a
#: diffusion model trained minutes averages the turns into one (squares generated as circles).
ROTATION_JITTER = math.radians(15)
#: the upright pose: angle (rad) of the first corner in `_vertices` (y points down)
UPRIGHT = {"circle": 0.0, "square": math.pi / 4, "triangle": -math.pi / 2}
P_TWO = 0.5  # share of two-object scenes
SPLITS = ("train", "val", "test", "heldout")
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "heldout": 3, "evaluator": 4}

#: (colour, shape) pairs that appear only in the heldout split
HELDOUT_PAIRS = frozenset({("green", "triangle"), ("magenta", "circle"), ("yellow", "square")})
#: unordered pairs of (colour, shape) objects that appear together only in the heldout split
HELDOUT_COMBOS = frozenset({
    frozenset({("red", "square"), ("blue", "circle")}), frozenset({("white", "triangle"), ("cyan", "square")}),
    frozenset({("yellow", "triangle"), ("green", "circle")}), frozenset({("blue", "triangle"), ("magenta", "square")}),
})
LABELS = ("shape", "shape_colour")


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its attributes, and the exact geometry behind them (centre and scale in px, angle in rad)."""

    shape: str
    colour: str
    size: str
    position: str  # a name of POSITIONS: the grid cell holding the centre
    cx: float
    cy: float
    scale: float
    angle: float

    def spec(self) -> ObjectSpec:
        """Its attributes as a caption states them."""
        return ObjectSpec(self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class ShapesExample:
    """One example: image (32, 32, 3) uint8, caption, objects in the order the caption names them,
    and for two objects the relation `objects[0] relation objects[1]`."""

    image: np.ndarray
    caption: str
    objects: tuple[ShapeObject, ...]
    relation: str | None

    def attributes(self) -> PromptSpec:
        """All attributes of the scene (the caption may state fewer)."""
        return PromptSpec(tuple(o.spec() for o in self.objects), self.relation)


def is_heldout(objects) -> bool:
    """True when a scene holds a held-out (colour, shape) pair or a held-out two-object combination."""
    return kinds_heldout([(o.colour, o.shape) for o in objects])


def kinds_heldout(kinds) -> bool:
    """`is_heldout` of a scene given as its objects' (colour, shape) pairs."""
    return any(k in HELDOUT_PAIRS for k in kinds) or (len(kinds) == 2 and frozenset(kinds) in HELDOUT_COMBOS)


def make_object(rng: np.random.Generator, colour: str, shape: str, cell: int) -> ShapeObject:
    """Place an object of the given kind in `cell` with random size, jitter and rotation."""
    size = SIZES[rng.integers(len(SIZES))]
    lo, hi = SIZE_RANGES[size]
    row, col = divmod(cell, GRID)
    cx = (col + 0.5) * CELL + rng.uniform(-JITTER, JITTER)
    cy = (row + 0.5) * CELL + rng.uniform(-JITTER, JITTER)
    angle = UPRIGHT[shape] + rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)
    return ShapeObject(shape, colour, size, POSITIONS[cell], cx, cy, rng.uniform(lo, hi), angle)


def random_kind(rng: np.random.Generator) -> tuple[str, str]:
    colours = tuple(COLOURS)
    return colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))]


def _pair_cells(rng: np.random.Generator) -> tuple[int, int, str]:
    """Two cells in one row or column, in caption order, and the relation of the first to the second."""
    line, (i, j) = rng.integers(GRID), rng.choice(GRID, size=2, replace=False)
    if rng.random() < 0.5:  # same row: i, j are columns
        return 3 * line + i, 3 * line + j, "to the left of" if i < j else "to the right of"
    return 3 * i + line, 3 * j + line, "above" if i < j else "below"


def random_scene(rng: np.random.Generator, heldout: bool) -> tuple[tuple[ShapeObject, ...], str | None]:
    """Draw a scene whose held-out status is `heldout` (see `is_heldout`).

    The heldout split draws its combinations directly: a single object of a held-out pair, or two
    objects forming a held-out combination (half the two-object scenes) or holding a held-out pair.
    """
    two = rng.random() < P_TWO
    if not two:
        cell = int(rng.integers(GRID * GRID))
        if heldout:
            pairs = sorted(HELDOUT_PAIRS)
            colour, shape = pairs[rng.integers(len(pairs))]
        else:
            while (kind := random_kind(rng)) in HELDOUT_PAIRS:
                pass
            colour, shape = kind
        return (make_object(rng, colour, shape, cell),), None
    a_cell, b_cell, relation = _pair_cells(rng)
    if heldout and rng.random() < 0.5:
        combos = sorted(sorted(c) for c in HELDOUT_COMBOS)
        kinds = combos[rng.integers(len(combos))]
        if rng.random() < 0.5:
            kinds = kinds[::-1]
    else:
        while True:
            kinds = [random_kind(rng), random_kind(rng)]
            if kinds_heldout(kinds) == heldout:
                break
    objects = tuple(make_object(rng, c, s, cell) for (c, s), cell in zip(kinds, (a_cell, b_cell), strict=True))
    return objects, relation


def _vertices(obj: ShapeObject, k: int) -> list[tuple[float, float]]:
    """Corners of a regular k-gon (square k=4, triangle k=3) of obj, in supersampled pixel units."""
    radius = obj.scale * (SQUARE_HALF_SIDE * math.sqrt(2) if k == 4 else TRIANGLE_RADIUS)
    return [((obj.cx + radius * math.cos(obj.angle + 2 * math.pi * i / k)) * SUPERSAMPLE,
             (obj.cy + radius * math.sin(obj.angle + 2 * math.pi * i / k)) * SUPERSAMPLE) for i in range(k)]


def render_objects(objects, resolution: int = RESOLUTION) -> np.ndarray:
    """Draw objects on black, anti-aliased by supersampling: (resolution, resolution, 3) uint8.

    Geometry is in 32-px units; another resolution rescales the whole picture.
    """
    side = RESOLUTION * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            r = obj.scale * SUPERSAMPLE
            x, y = obj.cx * SUPERSAMPLE, obj.cy * SUPERSAMPLE
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon(_vertices(obj, 4 if obj.shape == "square" else 3), fill=fill)
    if resolution == RESOLUTION:
        canvas = canvas.reduce(SUPERSAMPLE)
    else:
        canvas = canvas.resize((resolution, resolution), Image.BOX)
    return np.asarray(canvas, dtype=np.uint8)


def example_rng(seed: int, index: int, split: str) -> np.random.Generator:
    """The generator of example (seed, index, split): PCG64 on a SeedSequence of all three.

    `split` is one of SPLITS, or "evaluator": the attribute evaluator's own stream of training scenes.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_STREAM[split], index])))


def render_example(seed: int, index: int, split: str) -> ShapesExample:
    """Example `index` of `split` ("train", "val", "test", "heldout") under dataset seed `seed`, deterministic."""
    rng = example_rng(seed, index, split)
    objects, relation = random_scene(rng, heldout=split == "heldout")
    attributes = PromptSpec(tuple(o.spec() for o in objects), relation)
    caption = write_caption(attributes, rng)
    return ShapesExample(render_objects(objects), caption, objects, relation)


def evaluation_prompts(split: str = "test", n: int = 500, seed: int = SPLIT_SEED) -> list[str]:
    """The standard evaluation prompts: captions of examples 0..n-1 of `split` ("test" or "heldout"),
    every attribute stated (no size left out), so prompt fidelity checks all of them.

    With the default seed the prompts describe exactly the scenes of that split's real images
    (same objects, template and synonyms; only the sizes that a training caption may leave out
    are always written), so the real images score the evaluator's ceiling on the same prompts.
    """
    if split not in ("test", "heldout"):
        raise DataError(f'evaluation prompts come from the "test" or "heldout" split, got {split!r}')
    prompts = []
    for i in range(n):
        rng = example_rng(seed, i, split)
        objects, relation = random_scene(rng, heldout=split == "heldout")
        prompts.append(write_caption(PromptSpec(tuple(o.spec() for o in objects), relation), rng, p_omit_size=0.0))
    return prompts


#: the attributes of a single-object prompt, and their values
PROMPT_ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}


def contrast_prompts(attribute: str, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """k pairs of single-object prompts that differ in `attribute` alone (one template, no held-out pair),
    e.g. ("a large red circle at the top left", "a large red circle at the bottom"): the probe of which
    noise levels a text-to-image denoiser reads each attribute at (`genlab.engine.t2i_eval.prompt_sensitivity`)."""
    if attribute not in PROMPT_ATTRIBUTES:
        raise DataError(f"unknown attribute {attribute!r}; choose one of: {', '.join(PROMPT_ATTRIBUTES)}")
    rng = np.random.default_rng(seed)
    pick = lambda values: values[rng.integers(len(values))]
    pairs = []
    while len(pairs) < k:
        a = {name: pick(values) for name, values in PROMPT_ATTRIBUTES.items()}
        b = {**a, attribute: pick([v for v in PROMPT_ATTRIBUTES[attribute] if v != a[attribute]])}
        if kinds_heldout([(a["colour"], a["shape"])]) or kinds_heldout([(b["colour"], b["shape"])]):
            continue
        pairs.append(tuple(f"a {o['size']} {o['colour']} {o['shape']} at the {o['position']}" for o in (a, b)))
    return pairs


def label_of(example: ShapesExample, label: str) -> int:
    """Class of an example: its first object's shape index, or shape * len(COLOURS) + colour index."""
    first = example.objects[0]
    shape = SHAPES.index(first.shape)
    return shape if label == "shape" else shape * len(COLOURS) + tuple(COLOURS).index(first.colour)


def class_names(label: str) -> tuple[str, ...]:
    """Names of the classes of `label` ("shape" or "shape_colour")."""
    return SHAPES if label == "shape" else tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def shapes_data(split: str, n: int, seed: int = SPLIT_SEED, label: str = "shape",
                resolution: int = RESOLUTION) -> TensorData:
    """Examples 0..n-1 of `split` as TensorData: x (n, 3, R, R) in [-1, 1], y labels, captions.

    Args:
        split: "train", "val", "test" or "heldout".
        n: number of examples.
        seed: the dataset seed (independent of any run seed by default).
        label: "shape" (3 classes) or "shape_colour" (21 classes): of the first object the caption names.
        resolution: image side R (32 native; others resize the rendered images).
    """
    if label not in LABELS:
        raise DataError(f"unknown shapes label {label!r}; choose one of: {', '.join(LABELS)}")
    examples = [render_example(seed, i, split) for i in range(n)]
    x = images_to_tensor(np.stack([e.image for e in examples])) if examples else torch.empty(0, 3, RESOLUTION,
                                                                                                RESOLUTION)
    if resolution != RESOLUTION:
        x = resize_images(x, resolution).contiguous()
    y = torch.tensor([label_of(e, label) for e in examples], dtype=torch.int64)
    return TensorData(x=x, y=y, modality="image", name=NAME, class_names=class_names(label),
                      captions=tuple(e.caption for e in examples))


def load_shapes(spec: DataSpec, split: str = "train") -> TensorData:
    """The registry loader: `spec.n` examples of the train split, or round(n * test_fraction) of the test split."""
    if spec.channels not in (None, 3):
        raise DataError(f"shapes is RGB (3 channels), got data.channels={spec.channels}; remove data.channels")
    n = spec.n if split == "train" else max(1, math.floor(spec.n * spec.test_fraction + 0.5))
    return shapes_data("train" if split == "train" else "test", n, label=spec.label,
                       resolution=spec.resolution or RESOLUTION)
