"""The caption grammar of the `shapes` dataset: templates, synonyms, the parser that inverts them,
and the word-level :class:`CaptionTokenizer` whose vocabulary is exactly the grammar's words.

A caption names one object and its cell of the 3x3 grid ("a large red circle at the top left",
"top-left: a big red ball") or two objects and the relation between them ("a red circle to the
left of a blue square"). Every caption the templates write parses back, by :func:`parse_caption`,
to the attributes it states; attributes a caption leaves out (the size, sometimes; the cells of a
two-object scene) parse to None, meaning "any".

Words are lower-cased, hyphens read as spaces, and punctuation (":" and ",") is a word of its own
(:func:`caption_words`). A word outside the grammar is a :class:`~genlab.errors.DataError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genlab.data.tokenizer import PAD, WordTokenizer, load_tokenizer, split_words
from genlab.errors import DataError, printable

SHAPES = ("circle", "square", "triangle")
#: saturated colours, RGB uint8
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255),
}
SIZES = ("small", "large")
#: the cells of the 3x3 grid, row-major: POSITIONS[3 * row + col]
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
#: "A REL B": A's cell is strictly left of / right of / above / below B's cell
RELATIONS = ("to the left of", "to the right of", "above", "below")

# Synonyms a caption may use for each attribute value (the first one is the canonical name).
SHAPE_WORDS = {"circle": ("circle", "ball", "disc"), "square": ("square", "box", "block"), "triangle": ("triangle",)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_PHRASES = {
    "top left": ("top left", "upper left", "top-left"), "top": ("top",), "top right": ("top right", "upper right",
                                                                                         "top-right"),
    "left": ("left",), "center": ("center", "centre", "middle"), "right": ("right",),
    "bottom left": ("bottom left", "lower left", "bottom-left"), "bottom": ("bottom",),
    "bottom right": ("bottom right", "lower right", "bottom-right"),
}
RELATION_PHRASES = {"to the left of": ("to the left of", "left of"), "to the right of": ("to the right of", "right of"),
                    "above": ("above", "over"), "below": ("below", "under", "beneath")}
# Position words and the grid row / column they fix; a word absent from both leaves the middle (1).
ROW_WORDS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
COL_WORDS = {"left": 0, "right": 2}
CENTRE_WORDS = ("center", "centre", "middle")

# Templates: {o} an object phrase ("large red circle", "red ball"), {p} a position phrase.
SINGLE_TEMPLATES = ("a {o} at the {p}", "a {o} in the {p}", "{p}: a {o}", "there is a {o} at the {p}", "a {o}, {p}")
PAIR_TEMPLATES = ("a {a} {r} a {b}", "there is a {a} {r} a {b}", "{a} {r} {b}")
OTHER_WORDS = ("a", "at", "in", "the", "there", "is", "to", "of", ":", ",")
# Share of training captions that leave out an object's size (the image still has one): prompts
# without a size must work too.
P_OMIT_SIZE = 0.25

caption_words = split_words  # lower case, hyphens as spaces, each ":" or "," (or other symbol) a word


def grammar_vocabulary() -> tuple[str, ...]:
    """Every word any template can write, sorted (the CaptionTokenizer's vocabulary, after PAD)."""
    phrases = [*COLOURS, *(w for ws in SHAPE_WORDS.values() for w in ws), *(w for ws in SIZE_WORDS.values() for w in ws),
               *(p for ps in POSITION_PHRASES.values() for p in ps), *(p for ps in RELATION_PHRASES.values() for p in ps),
               *OTHER_WORDS]
    return tuple(sorted({w for phrase in phrases for w in caption_words(phrase)}))


@dataclass(frozen=True)
class ObjectSpec:
    """One object as a caption states it: None where the caption leaves the attribute free."""

    shape: str
    colour: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """What a caption asks for: one object with its cell, or two objects with `objects[0] relation objects[1]`."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def kind(self) -> str:
        """"single" or "pair"."""
        return "single" if len(self.objects) == 1 else "pair"


def object_phrase(obj: ObjectSpec, rng: np.random.Generator, omit_size: bool) -> str:
    """"large red circle" with a random synonym for the shape and size; no size when `omit_size`."""
    shape = SHAPE_WORDS[obj.shape][rng.integers(len(SHAPE_WORDS[obj.shape]))]
    if omit_size or obj.size is None:
        return f"{obj.colour} {shape}"
    size = SIZE_WORDS[obj.size][rng.integers(len(SIZE_WORDS[obj.size]))]
    return f"{size} {obj.colour} {shape}"


def write_caption(prompt: PromptSpec, rng: np.random.Generator, p_omit_size: float = P_OMIT_SIZE) -> str:
    """A caption of `prompt` from a random template and synonyms, drawn from `rng`.

    Args:
        prompt: one object with its position, or two objects and a relation.
        rng: numpy generator (the example's own, so the caption is deterministic too).
        p_omit_size: probability of leaving out each object's size (0 always states it).
    """
    if prompt.kind == "single":
        (obj,) = prompt.objects
        template = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))]
        phrases = POSITION_PHRASES[obj.position]
        return template.format(o=object_phrase(obj, rng, rng.random() < p_omit_size),
                               p=phrases[rng.integers(len(phrases))])
    a, b = prompt.objects
    template = PAIR_TEMPLATES[rng.integers(len(PAIR_TEMPLATES))]
    rel = RELATION_PHRASES[prompt.relation][rng.integers(len(RELATION_PHRASES[prompt.relation]))]
    return template.format(a=object_phrase(a, rng, rng.random() < p_omit_size), r=rel,
                           b=object_phrase(b, rng, rng.random() < p_omit_size))


def check_words(caption: str) -> list[str]:
    """The caption's words; raises DataError naming every word outside the grammar."""
    words = caption_words(caption)
    known = set(grammar_vocabulary())
    unknown = sorted({w for w in words if w not in known})
    if unknown:
        raise DataError(f"prompt {printable(caption)!r} has word(s) outside the shapes vocabulary: {', '.join(unknown)}; "
                        "use colours, shapes, sizes, grid positions and relations as `genlab list` documents")
    return words


_SHAPE_OF = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_RELATION_OF = sorted(((tuple(caption_words(p)), r) for r, ps in RELATION_PHRASES.items() for p in ps),
                      key=lambda pr: -len(pr[0]))  # longest phrase first: "to the left of" before "left of"


def _parse_object(words: list[str], caption: str) -> ObjectSpec:
    """The one object (size?, colour, shape) stated by `words`."""
    found = {kind: [v for w in words if (v := table.get(w))] for kind, table in
             (("shape", _SHAPE_OF), ("colour", {c: c for c in COLOURS}), ("size", _SIZE_OF))}
    for kind in ("shape", "colour"):
        if len(found[kind]) != 1:
            what = "no" if not found[kind] else f"{len(found[kind])}"
            raise DataError(f"prompt {printable(caption)!r} names {what} {kind} for an object; name exactly one "
                            f"({', '.join(SHAPES if kind == 'shape' else COLOURS)})")
    if len(found["size"]) > 1:
        raise DataError(f"prompt {printable(caption)!r} names {len(found['size'])} sizes for one object; name one")
    return ObjectSpec(found["shape"][0], found["colour"][0], found["size"][0] if found["size"] else None)


def _parse_position(words: list[str], caption: str) -> str:
    """The grid cell a position phrase names: row from top/upper/bottom/lower, column from left/right."""
    rows = [ROW_WORDS[w] for w in words if w in ROW_WORDS]
    cols = [COL_WORDS[w] for w in words if w in COL_WORDS]
    if len(rows) > 1 or len(cols) > 1:
        raise DataError(f"prompt {printable(caption)!r} names more than one position; name one grid cell")
    if not rows and not cols and not any(w in CENTRE_WORDS for w in words):
        raise DataError(f"prompt {printable(caption)!r} names neither a position nor a relation; add one "
                        f"(e.g. 'at the top left', 'to the left of a blue square')")
    return POSITIONS[3 * (rows[0] if rows else 1) + (cols[0] if cols else 1)]


def parse_caption(caption: str) -> PromptSpec:
    """Read a caption back into the attributes it states (the inverse of `write_caption`).

    A caption with a relation phrase is two objects, `objects[0] relation objects[1]`, with no
    cells; otherwise it is one object and the cell its position words name.

    Raises:
        DataError: a word outside the grammar (named), or not exactly one shape and colour per
            object, or no position and no relation.
    """
    words = check_words(caption)
    found = _find_relation(words)
    if found is not None:
        i, k, relation = found
        a, b = _parse_object(words[:i], caption), _parse_object(words[i + k :], caption)
        return PromptSpec((a, b), relation)
    obj = _parse_object(words, caption)
    return PromptSpec((ObjectSpec(obj.shape, obj.colour, obj.size, _parse_position(words, caption)),))


def _find_relation(words: list[str]) -> tuple[int, int, str] | None:
    """(first word, length, relation) of the relation phrase in `words`, None when there is none."""
    for phrase, relation in _RELATION_OF:
        k = len(phrase)
        hits = [i for i in range(len(words) - k + 1) if tuple(words[i : i + k]) == phrase]
        if hits:
            return hits[0], k, relation
    return None


def spatial_order(relation: str | None) -> tuple[int, ...]:
    """Indices of a prompt's objects (`PromptSpec.objects`) in spatial order: of two objects, the one the
    relation puts to the left of (or above) the other comes first. (0,) for one object (relation None)."""
    if relation is None:
        return (0,)
    return (0, 1) if relation in ("to the left of", "above") else (1, 0)


def word_roles(caption: str) -> list[int]:
    """For each word of a caption, the spatial rank (see `spatial_order`) of the object whose phrase it is in, or
    -1 for a relation word: a one-object caption is all 0; "a red circle to the right of a blue square" is
    1 1 1 -1 -1 -1 -1 0 0 0 (the square is the left one)."""
    words = check_words(caption)
    found = _find_relation(words)
    if found is None:
        return [0] * len(words)
    i, k, relation = found
    order = spatial_order(relation)
    return [order.index(0)] * i + [-1] * k + [order.index(1)] * (len(words) - i - k)


def max_caption_words() -> int:
    """The most words any template writes (with the longest synonyms): a safe `max_len` for encoding."""
    longest = {kind: max(len(caption_words(w)) for ws in table.values() for w in ws)
               for kind, table in (("p", POSITION_PHRASES), ("r", RELATION_PHRASES))}
    obj = 3  # size colour shape, one word each
    single = max(len(caption_words(t.format(o=" ".join(["x"] * obj), p=" ".join(["x"] * longest["p"]))))
                 for t in SINGLE_TEMPLATES)
    pair = max(len(caption_words(t.format(a=" ".join(["x"] * obj), b=" ".join(["x"] * obj),
                                          r=" ".join(["x"] * longest["r"])))) for t in PAIR_TEMPLATES)
    return max(single, pair)


class CaptionTokenizer(WordTokenizer):
    """The word-level tokenizer of shapes captions: id 0 is PAD, then the grammar's words, sorted.

    `encode(captions, max_len)` gives (ids (B, L) int64, mask (B, L) bool, True at real words),
    padded with PAD (id 0, mask False) to L = max_len (default: the longest caption). There is
    no unknown token: a word outside the grammar raises a DataError naming it, since a prompt
    the model cannot read should fail loudly rather than be silently changed. The empty prompt
    "" encodes to all PAD (mask all False): what classifier-free guidance's null prompt is.
    """

    def __init__(self, words: Sequence[str] | None = None) -> None:
        super().__init__(grammar_vocabulary() if words is None else words, specials=(PAD,))

    @classmethod
    def load(cls, path) -> CaptionTokenizer:
        """Read a tokenizer written by `save` (a "word" tokenizer file) as a CaptionTokenizer."""
        tok = load_tokenizer(path)
        if not isinstance(tok, WordTokenizer) or tok.specials != (PAD,):
            raise DataError(f"{printable(path)} is not a shapes caption tokenizer file")
        return cls(tok.words)
