"""The shapes dataset: determinism, held-out combinations, captions that parse back, the caption tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genlab.data import DataSpec, load_dataset
from genlab.data.shape_captions import (
    COLOURS,
    POSITIONS,
    SHAPES,
    CaptionTokenizer,
    ObjectSpec,
    PromptSpec,
    grammar_vocabulary,
    max_caption_words,
    parse_caption,
    write_caption,
)
from genlab.data.shapes import (
    CELL,
    HELDOUT_COMBOS,
    HELDOUT_PAIRS,
    ROTATION_JITTER,
    SPLITS,
    UPRIGHT,
    ShapeObject,
    is_heldout,
    render_example,
    render_objects,
    shapes_data,
)
from genlab.data.tokenizer import load_tokenizer
from genlab.errors import DataError, GenlabError

N_SPLIT_CHECK = 1500


def test_examples_are_deterministic_by_seed_index_and_split():
    for split in SPLITS:
        a, b = render_example(3, 17, split), render_example(3, 17, split)
        assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.objects == b.objects
    base = render_example(0, 5, "train")
    for other in (render_example(1, 5, "train"), render_example(0, 6, "train"), render_example(0, 5, "test")):
        assert not np.array_equal(base.image, other.image)


def test_image_format_and_antialiasing():
    e = render_example(0, 0, "train")
    assert e.image.shape == (32, 32, 3) and e.image.dtype == np.uint8
    # anti-aliased edges: some pixels are partly covered (neither black nor the full colour)
    values = np.unique(np.concatenate([render_example(0, i, "train").image.ravel() for i in range(20)]))
    assert len(values) > 10
    # the background is black: pixels farther than 8 px from every object centre are 0
    for i in range(20):
        e = render_example(0, i, "train")
        yy, xx = np.mgrid[0:32, 0:32] + 0.5
        far = np.ones((32, 32), dtype=bool)
        for o in e.objects:
            far &= np.hypot(xx - o.cx, yy - o.cy) > 8
        assert far.any() and (e.image[far] == 0).all()


def test_objects_lie_in_their_cells_with_their_colour():
    for i in range(200):
        e = render_example(0, i, "train")
        for o in e.objects:
            row, col = divmod(POSITIONS.index(o.position), 3)
            assert int(o.cy // CELL) == row and int(o.cx // CELL) == col
            # the centre pixel of a drawn object is (almost) exactly its colour, unless another object covers it
            pixel = render_objects([o])[int(o.cy), int(o.cx)]
            assert np.abs(pixel.astype(int) - np.array(COLOURS[o.colour])).max() <= 64


def test_polygons_turn_a_jitter_away_from_upright():
    turns = {"square": [], "triangle": []}
    for i in range(300):
        for o in render_example(0, i, "train").objects:
            if o.shape in turns:
                turns[o.shape].append(o.angle - UPRIGHT[o.shape])
    for shape, t in turns.items():
        t = np.array(t)
        assert len(t) > 50 and np.abs(t).max() <= ROTATION_JITTER, shape
        assert t.std() > ROTATION_JITTER / 3, shape  # jittered (uniform: std = jitter / sqrt 3), not fixed
    # upright: a square's top edge is level (its top row as wide as its middle one), a triangle's apex is up
    def widths(shape: str) -> np.ndarray:
        image = render_objects([ShapeObject(shape, "white", "large", "center", 16.0, 16.0, 4.0, UPRIGHT[shape])])
        full = (image[..., 0] == 255).sum(1)
        return full[full > 0]

    square, triangle = widths("square"), widths("triangle")
    assert square[0] == square[len(square) // 2] >= 6
    assert triangle[0] <= 2 and triangle[-1] >= 6


def test_heldout_combinations_never_reach_train_val_test():
    seen_pairs = set()
    for split in ("train", "val", "test"):
        for i in range(N_SPLIT_CHECK):
            e = render_example(0, i, split)
            kinds = [(o.colour, o.shape) for o in e.objects]
            assert not any(k in HELDOUT_PAIRS for k in kinds), (split, i, e.caption)
            assert not (len(kinds) == 2 and frozenset(kinds) in HELDOUT_COMBOS), (split, i, e.caption)
            seen_pairs.update(kinds)
    # every other (colour, shape) pair does appear
    assert seen_pairs == {(c, s) for c in COLOURS for s in SHAPES} - HELDOUT_PAIRS
    held = [render_example(0, i, "heldout") for i in range(400)]
    assert all(is_heldout(e.objects) for e in held)
    combos = {frozenset((o.colour, o.shape) for o in e.objects) for e in held if len(e.objects) == 2}
    assert HELDOUT_COMBOS <= combos  # every held-out combination is tested
    assert {(o.colour, o.shape) for e in held for o in e.objects} >= HELDOUT_PAIRS


def test_two_object_relation_holds_between_cells():
    for i in range(300):
        e = render_example(0, i, "train")
        if e.relation is None:
            assert len(e.objects) == 1
            continue
        (ra, ca), (rb, cb) = (divmod(POSITIONS.index(o.position), 3) for o in e.objects)
        holds = {"to the left of": ra == rb and ca < cb, "to the right of": ra == rb and ca > cb,
                 "above": ca == cb and ra < rb, "below": ca == cb and ra > rb}
        assert holds[e.relation], (e.caption, e.objects)


def test_captions_parse_back_to_the_attributes():
    templates_seen = set()
    for split in SPLITS:
        for i in range(400):
            e = render_example(0, i, split)
            parsed, truth = parse_caption(e.caption), e.attributes()
            assert parsed.relation == truth.relation and len(parsed.objects) == len(truth.objects), e.caption
            for p, t in zip(parsed.objects, truth.objects, strict=True):
                assert (p.shape, p.colour) == (t.shape, t.colour), e.caption
                assert p.size in (None, t.size), e.caption
                assert p.position == (t.position if truth.relation is None else None), e.caption
            templates_seen.add(e.caption.split()[0])
    assert len(templates_seen) >= 4  # several templates in use


def test_full_captions_state_every_attribute():
    rng = np.random.default_rng(0)
    for position in POSITIONS:
        prompt = PromptSpec((ObjectSpec("triangle", "cyan", "small", position),))
        for _ in range(10):
            assert parse_caption(write_caption(prompt, rng, p_omit_size=0.0)) == prompt


def test_parser_on_handwritten_prompts():
    assert parse_caption("top-left: a large red ball") == PromptSpec((ObjectSpec("circle", "red", "large", "top left"),))
    assert parse_caption("A small Blue box in the middle") == PromptSpec((ObjectSpec("square", "blue", "small",
                                                                                     "center"),))
    assert parse_caption("a red circle to the left of a blue square") == PromptSpec(
        (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "to the left of")
    assert parse_caption("white triangle under big green disc").relation == "below"


@pytest.mark.parametrize("prompt, fragment", [
    ("a purple circle at the top", "purple"),
    ("a red circle at the top, please!", "!, please"),
    ("a red circle", "position"),
    ("a red blue circle at the top", "colour"),
])
def test_bad_prompts_raise_one_line_errors(prompt, fragment):
    with pytest.raises(DataError) as info:
        parse_caption(prompt)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_encodes_pads_and_masks():
    tok = CaptionTokenizer()
    assert tok.vocab_size == len(grammar_vocabulary()) + 1 and tok.special_id("<|pad|>") == 0
    captions = ["a red circle at the top left", "top-left: a big red ball", ""]
    ids, mask = tok.encode(captions, max_len=max_caption_words())
    assert ids.shape == mask.shape == (3, max_caption_words()) and ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [7, 7, 0]
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    assert tok.decode(ids[1, mask[1]].tolist()) == "top left : a big red ball"
    ids2, _ = tok.encode(captions[:2])  # default length: the longest caption
    assert ids2.shape == (2, 7) and torch.equal(ids2, ids[:2, :7])
    with pytest.raises(DataError, match="max_len"):
        tok.encode(captions, max_len=3)


def test_tokenizer_unknown_words_raise_naming_them():
    with pytest.raises(GenlabError) as info:
        CaptionTokenizer().encode(["a purple circle at the zenith"], max_len=16)
    assert "purple, zenith" in str(info.value) and "\n" not in str(info.value)


def test_every_caption_fits_max_caption_words():
    tok = CaptionTokenizer()
    captions = [render_example(0, i, s).caption for s in SPLITS for i in range(300)]
    _, mask = tok.encode(captions, max_len=max_caption_words())
    assert int(mask.sum(1).max()) <= max_caption_words()


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = CaptionTokenizer()
    tok.save(tmp_path / "tok.json")
    back = CaptionTokenizer.load(tmp_path / "tok.json")
    assert back == tok and load_tokenizer(tmp_path / "tok.json").vocab_size == tok.vocab_size
    ids, _ = tok.encode(["a red circle at the top"], 8)
    assert torch.equal(back.encode(["a red circle at the top"], 8)[0], ids)


def test_dataset_loads_through_the_registry():
    spec = DataSpec(name="shapes", n=64)
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert train.x.shape == (64, 3, 32, 32) and len(test) == round(64 * spec.test_fraction)
    assert train.x.min() >= -1 and train.x.max() <= 1 and train.x.min() == -1
    assert train.num_classes == 3 and train.class_names == SHAPES
    first = render_example(0, 0, "train")
    assert train.captions[0] == first.caption and int(train.y[0]) == SHAPES.index(first.objects[0].shape)
    expected = torch.from_numpy(np.array(first.image)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(train.x[0], expected)
    colour = load_dataset(DataSpec(name="shapes", n=64, label="shape_colour"), "train")
    assert colour.num_classes == 21 and colour.class_names[int(colour.y[0])] == \
        f"{first.objects[0].colour} {first.objects[0].shape}"
    # select and examples carry the captions
    idx = torch.tensor([5, 2])
    sub = train.select(idx)
    assert sub.captions == (train.captions[5], train.captions[2])
    x, y, extras = train.examples(idx)
    assert torch.equal(y, sub.y)
    assert extras["captions"] == sub.captions and torch.equal(x, sub.x)
    small = shapes_data("val", 4, resolution=16)
    assert small.x.shape == (4, 3, 16, 16)
