"""Deterministic synthetic scenes, questions and captions for training and evaluating a tiny AKI model.

A scene is three to six flat shapes (kind, colour, size, position) on a plain background, drawn with
PIL. Every sample is rebuilt from ``(seed, split, index)`` alone. A scene belongs to exactly one split,
the one picked by a stable hash of its signature (the sorted items of its caption: each shape's size,
colour, kind and cell of a 3 x 3 grid), so train, validation and test never share a scene. Each
question asks about one or two shapes among several, so a few visual tokens cannot hold every answer
at once. Every answer is one short word or number from a closed vocabulary, except multiple choice,
whose answer is the chosen option as the list writes it, text then letter: ``"right (B)"``.

Example::

    sample = make_sample("train", 0)            # or generate_split("train", 1000)
    sample.question, sample.answer, caption(sample.scene), sample.image.size
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 230),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
# Side of the square with the same area, as a fraction of the image side: each step about doubles the area.
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.16, "large": 0.23}
BACKGROUND = (48, 48, 48)
SPLITS = ("train", "validation", "test")
MIN_SHAPES, MAX_SHAPES = 3, 6
MAX_COUNT = 4  # counting answers are 0 .. MAX_COUNT
LETTERS = ("A", "B", "C", "D")
# "(A)" .. "(D)": how a multiple-choice option ends
OPTION_MARKERS = tuple(f"({letter})" for letter in LETTERS)
# Reference points of "closer to" questions, in image fractions (x right, y down).
POINTS: dict[str, tuple[float, float]] = {
    "the top left corner": (0.0, 0.0),
    "the top right corner": (1.0, 0.0),
    "the bottom left corner": (0.0, 1.0),
    "the bottom right corner": (1.0, 1.0),
    "the middle": (0.5, 0.5),
}
# Caption phrase of each cell (row, column) of a 3 x 3 grid.
LOCATIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
# Tokens: an option marker "(A)" .. "(D)" whole, then words, numbers and runs of punctuation (the rule of the
# `tokenizers` Whitespace pre-tokenizer). A whole marker lets a tiny model copy an option's letter with one
# look-up: the marker is the token that follows, in the list, the option text it has just written.
WORD_PATTERN = re.compile("|".join(map(re.escape, OPTION_MARKERS)) + r"|\w+|[^\w\s]+")

_EDGE = 0.02  # empty border kept inside the image
_GAP = 0.03  # least empty space between two bounding boxes (about 2 px at 64 px)
_MARGIN = 0.1  # least difference between two distances that a question compares
_PLACEMENT_TRIES = 50
_ATTEMPTS = 2000
_MIN_IMAGE_SIZE = 32

_TEMPLATES = {
    "colour": "what colour is the {kind}?",
    "shape": "which shape is {colour}?",
    "size": "what size is the {a}?",
    "count_kind": "how many {plural} are there?",
    "count_colour": "how many {colour} shapes are there?",
    "left_right": "is the {a} left or right of the {b}?",
    "above_below": "is the {a} above or below the {b}?",
    "bigger": "which is bigger, the {a} or the {b}?",
    "closer": "which is closer to {point}, the {a} or the {b}?",
    "exists": "is there a {a} in the image?",
    "relation": "where is the {a} relative to the {b}?",
    "distance": "which shape is closer to the {c}?",
    # A multiple-choice option, and the answer: the chosen option written out, text then letter, so the letter
    # is a copy of the marker that follows the option text in the list (docs/design.md).
    "option": "{text} {marker}",
    "letter": "answer with the option and its letter.",
    "caption_item": "{colour} {kind}, {size}, {location}",
    "description": "a {size} {colour} {kind} {location}",
}


class Family(str, Enum):
    """Question families; each has its own answer format (see `chance_level`)."""

    ATTRIBUTE = "attribute"  # colour / kind / size word of one shape
    COUNTING = "counting"  # a number 0 .. MAX_COUNT
    SPATIAL = "spatial"  # left / right / above / below
    COMPARISON = "comparison"  # colour word of the bigger / closer of two named shapes
    EXISTENCE = "existence"  # yes / no, POPE-style
    MULTIPLE_CHOICE = "multiple_choice"  # the chosen option, text then letter, CV-Bench-style options


# Per family: subtype (one question template each, equally likely) -> number of equally likely answers.
# Existence subtypes are POPE's negative-sampling settings; each of them is half yes, half no.
_SUBTYPES: dict[Family, dict[str, int]] = {
    Family.ATTRIBUTE: {"colour": len(COLOURS), "shape": len(KINDS), "size": len(SIZES)},
    Family.COUNTING: {"count_kind": MAX_COUNT + 1, "count_colour": MAX_COUNT + 1},
    Family.SPATIAL: {"left_right": 2, "above_below": 2},
    Family.COMPARISON: {"bigger": 2, "closer": 2},
    Family.EXISTENCE: {"random": 2, "popular": 2, "adversarial": 2},
    Family.MULTIPLE_CHOICE: {"count": 4, "relation": 2, "distance": 2},
}


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    """Vertices of a star with one point up: outer radius 1, inner radius `inner`."""
    vertices = []
    for i in range(2 * points):
        radius, angle = (1.0 if i % 2 == 0 else inner), -math.pi / 2 + i * math.pi / points
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    return vertices


def _centred(vertices: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Shift an outline so that the centre of its bounding box is the origin."""
    xs, ys = zip(*vertices, strict=True)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return tuple((x - cx, y - cy) for x, y in vertices)


def _polygon_area(vertices: Sequence[tuple[float, float]]) -> float:
    """Shoelace formula."""
    following = [*vertices[1:], vertices[0]]
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(vertices, following, strict=True))) / 2


# Unit outlines centred on their bounding box (x right, y down); the circle is drawn as an ellipse.
_OUTLINES: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)),
    "triangle": _centred([(0.0, -1.0), (1.0, math.sqrt(3) - 1.0), (-1.0, math.sqrt(3) - 1.0)]),
    "diamond": ((0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)),
    "star": _centred(_star()),
}
_UNIT_AREA = {"circle": math.pi, **{kind: _polygon_area(outline) for kind, outline in _OUTLINES.items()}}
_UNIT_HALF = {
    "circle": (1.0, 1.0),
    **{kind: (max(x for x, _ in o), max(y for _, y in o)) for kind, o in _OUTLINES.items()},
}


def _scale(kind: str, size: str) -> float:
    """Factor from the unit outline to image fractions, so that every kind of one size has one area."""
    return SIZES[size] / math.sqrt(_UNIT_AREA[kind])


# (kind, size) -> half width and half height of the bounding box, in image fractions.
_HALF_EXTENTS = {
    (kind, size): (_scale(kind, size) * _UNIT_HALF[kind][0], _scale(kind, size) * _UNIT_HALF[kind][1])
    for kind in KINDS
    for size in SIZES
}


def _cell(x: float, y: float) -> tuple[int, int]:
    """(row, column) of a point in the 3 x 3 grid of caption locations."""
    return min(int(y * 3), 2), min(int(x * 3), 2)


@dataclass(frozen=True)
class Shape:
    """One flat shape; positions are fractions of the image side, so a scene renders at any size."""

    kind: str
    colour: str
    size: str
    x: float  # centre of the bounding box, 0 = left edge, 1 = right edge
    y: float  # centre of the bounding box, 0 = top edge, 1 = bottom edge

    def __post_init__(self) -> None:
        for attribute, allowed in (("kind", KINDS), ("colour", COLOURS), ("size", SIZES)):
            if getattr(self, attribute) not in allowed:
                raise ValueError(
                    f"unknown {attribute} {getattr(self, attribute)!r}; expected one of {list(allowed)}"
                )

    @property
    def name(self) -> str:
        """How questions refer to the shape, e.g. "red circle" (unique within a generated scene)."""
        return f"{self.colour} {self.kind}"

    @property
    def area(self) -> float:
        """Area as a fraction of the image area; equal for every kind of one size."""
        return SIZES[self.size] ** 2

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in image fractions."""
        half_w, half_h = _HALF_EXTENTS[self.kind, self.size]
        return (self.x - half_w, self.y - half_h, self.x + half_w, self.y + half_h)

    def outline(self) -> list[tuple[float, float]]:
        """Polygon vertices in image fractions (not for circles, which are drawn from the bounding box)."""
        scale = _scale(self.kind, self.size)
        return [(self.x + scale * u, self.y + scale * v) for u, v in _OUTLINES[self.kind]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "colour": self.colour,
            "size": self.size,
            "x": self.x,
            "y": self.y,
            "bbox": [round(v, 4) for v in self.bbox],
        }


@dataclass(frozen=True)
class Scene:
    """Shapes on the background; generated scenes list them in reading order (grid row, then x)."""

    shapes: tuple[Shape, ...]

    def signature(self) -> str:
        """Order-free description that decides the split: the sorted descriptions of the shapes, each
        "a {size} {colour} {kind} {location}" (what a caption says, so no caption is in two splits).
        """
        return "; ".join(
            sorted(_TEMPLATES["description"].format(**_caption_fields(shape)) for shape in self.shapes)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": [shape.to_dict() for shape in self.shapes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of `to_dict` (the bounding boxes there are derived, so they are not read)."""
        return cls(tuple(Shape(s["kind"], s["colour"], s["size"], s["x"], s["y"]) for s in data["shapes"]))


@dataclass(frozen=True)
class Sample:
    """One question about one rendered scene."""

    id: str
    split: str
    family: Family
    subtype: str
    question: str
    answer: str
    options: tuple[str, ...] | None  # option texts of a multiple-choice question, in letter order
    scene: Scene
    image: Image.Image = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Every field but the image, as JSON-serialisable values."""
        return {
            "id": self.id,
            "split": self.split,
            "family": self.family.value,
            "subtype": self.subtype,
            "question": self.question,
            "answer": self.answer,
            "options": None if self.options is None else list(self.options),
            "scene": self.scene.to_dict(),
        }

    def to_llava(self, image_path: str) -> dict[str, Any]:
        """LLaVA conversation record (one human turn with ``<image>``, one answer) plus the fields of `to_json`."""
        record = self.to_json()
        return {
            "id": record.pop("id"),
            "image": image_path,
            "conversations": [
                {"from": "human", "value": f"<image>\n{self.question}"},
                {"from": "gpt", "value": self.answer},
            ],
            **record,
        }


@dataclass(frozen=True)
class SplitFiles:
    """What `write_split` wrote: the question and caption JSONL files and the image folder."""

    questions: Path
    captions: Path
    images: Path


def location(shape: Shape) -> str:
    """Caption phrase of the grid cell that holds the shape's centre, e.g. "at the top left"."""
    return LOCATIONS[_cell(shape.x, shape.y)]


def _caption_fields(shape: Shape) -> dict[str, str]:
    return {"size": shape.size, "colour": shape.colour, "kind": shape.kind, "location": location(shape)}


def _caption_order(shape: Shape) -> tuple[int, int]:
    return _COLOUR_NAMES.index(shape.colour), KINDS.index(shape.kind)


def caption(scene: Scene) -> str:
    """Pre-training caption listing every shape by colour (in `COLOURS` order), then kind.

    Example: "red circle, small, at the top left. blue square, large, in the middle."

    Each item starts with the shape's name, the words questions use, and then says what the image shows of
    it. A small model learns to ground words fastest this way: the next colour is a "which colours are
    there" detection and the rest of an item is read from the named shape (in reading order, each item would
    first need the shape's rank on the page).
    """
    items = (
        _TEMPLATES["caption_item"].format(**_caption_fields(s))
        for s in sorted(scene.shapes, key=_caption_order)
    )
    return ". ".join(items) + "."


def _stable_hash(text: str) -> int:
    """Hash that, unlike `hash`, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def split_of(scene: Scene) -> str:
    """The one split a scene may appear in, from a stable hash of its signature (a third each)."""
    return SPLITS[_stable_hash(scene.signature()) % len(SPLITS)]


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image of ``image_size`` x ``image_size`` pixels (no anti-aliasing)."""
    return _draw(scene, image_size, "RGB", BACKGROUND, [COLOURS[shape.colour] for shape in scene.shapes])


def render_labels(scene: Scene, image_size: int = 64) -> Image.Image:
    """Which shape each pixel of `render` shows: a mode "L" image, 0 for background, ``i + 1`` for
    ``scene.shapes[i]`` (the same geometry, so the same pixels; later shapes cover earlier ones).
    """
    return _draw(scene, image_size, "L", 0, list(range(1, len(scene.shapes) + 1)))


def _draw(scene: Scene, image_size: int, mode: str, background: Any, fills: Sequence[Any]) -> Image.Image:
    _check_image_size(image_size)
    image = Image.new(mode, (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for shape, fill in zip(scene.shapes, fills, strict=True):
        if shape.kind == "circle":
            draw.ellipse([v * image_size for v in shape.bbox], fill=fill)
        else:
            draw.polygon([(x * image_size, y * image_size) for x, y in shape.outline()], fill=fill)
    return image


def chance_level(family: Family | str) -> float:
    """Exact-match accuracy of the best blind guess that reads the question but not the image.

    Subtypes (question templates) of a family are equally likely and, by construction, so are the
    answers of each subtype, so the best blind guess scores 1 / (number of possible answers) per
    subtype; this returns the mean over the family's subtypes. For yes / no, left / right and
    multiple choice it equals the majority-class rate (for multiple choice: always answering the first
    option, "... (A)", written out).
    """
    answers = _SUBTYPES[_families([family])[0]]
    return sum(1 / n for n in answers.values()) / len(answers)


def words(text: str) -> list[str]:
    """Split text into the tokens that `vocabulary` lists (words, numbers, runs of punctuation)."""
    return WORD_PATTERN.findall(text)


def vocabulary() -> list[str]:
    """Sorted list of every token that can appear in a question, answer, option or caption."""
    texts = [re.sub(r"\{\w+\}", " ", template) for template in _TEMPLATES.values()]
    texts += [*KINDS, *(kind + "s" for kind in KINDS), *COLOURS, *SIZES, *POINTS, *LOCATIONS.values()]
    texts += [
        *OPTION_MARKERS,
        *(str(n) for n in range(MAX_COUNT + 1)),
        *_RELATIONS,
        "yes no",
        ", .",
    ]  # answers, caption
    return sorted({word for text in texts for word in words(text)})


def tokenizer() -> Any:
    """The word-level tokenizer of the synthetic scenes: every word of :func:`vocabulary` is one token (an
    option marker such as ``(B)`` too), AKI's special tokens first (:func:`aki.models.aki.word_tokenizer`).
    """
    from ..models.aki.builders import word_tokenizer

    return word_tokenizer(vocabulary(), pattern=WORD_PATTERN)


class _Spec(NamedTuple):
    kind: str
    colour: str
    size: str


class _Draft(NamedTuple):
    scene: Scene
    question: str
    answer: str
    options: tuple[str, ...] | None = None


_COLOUR_NAMES = tuple(COLOURS)
_SIZE_NAMES = tuple(SIZES)


def _too_close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two bounding boxes are less than _GAP apart (or overlap)."""
    return not (a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1])


def _reading_order(shape: Shape) -> tuple[int, float, float]:
    return (_cell(shape.x, shape.y)[0], shape.x, shape.y)


def _place(rng: random.Random, specs: Sequence[_Spec]) -> Scene | None:
    """Random non-touching positions for the specs (largest first), or None if they do not fit."""
    shapes: list[Shape] = []
    boxes: list[tuple[float, float, float, float]] = []
    for spec in sorted(specs, key=lambda s: -SIZES[s.size]):
        half_w, half_h = _HALF_EXTENTS[spec.kind, spec.size]
        for _ in range(_PLACEMENT_TRIES):
            x = round(rng.uniform(_EDGE + half_w, 1 - _EDGE - half_w), 4)
            y = round(rng.uniform(_EDGE + half_h, 1 - _EDGE - half_h), 4)
            box = (x - half_w, y - half_h, x + half_w, y + half_h)  # as Shape.bbox computes it
            if not any(_too_close(box, other) for other in boxes):
                shapes.append(Shape(spec.kind, spec.colour, spec.size, x, y))
                boxes.append(box)
                break
        else:
            return None
    return Scene(tuple(sorted(shapes, key=_reading_order)))


def _random_scene(
    rng: random.Random,
    fixed: Sequence[_Spec] = (),
    allowed: Callable[[str, str], bool] = lambda kind, colour: True,
) -> Scene:
    """A scene holding the fixed specs plus random shapes whose (kind, colour) is allowed.

    No two shapes share both kind and colour, so "the red circle" always names one shape.
    """
    for _ in range(_ATTEMPTS):
        count = rng.randint(max(MIN_SHAPES, len(fixed)), MAX_SHAPES)
        used = {(s.kind, s.colour) for s in fixed}
        pool = [(k, c) for k in KINDS for c in _COLOUR_NAMES if (k, c) not in used and allowed(k, c)]
        extra = [_Spec(k, c, rng.choice(_SIZE_NAMES)) for k, c in rng.sample(pool, count - len(fixed))]
        scene = _place(rng, [*fixed, *extra])
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {len(fixed)} fixed shapes in {_ATTEMPTS} attempts")


def _retry(attempt: Callable[[], _Draft | None], split: str) -> _Draft:
    """Repeat an attempt until it gives a question about a scene of the split.

    The answer is drawn before the attempts, so rejecting scenes does not skew the answers.
    """
    for _ in range(_ATTEMPTS):
        draft = attempt()
        if draft is not None and split_of(draft.scene) == split:
            return draft
    raise RuntimeError(f"no {split} scene satisfied the question in {_ATTEMPTS} attempts")


def _counting_scene(rng: random.Random, by_kind: bool, count: int) -> tuple[Scene, str]:
    """A scene with exactly `count` shapes of one kind (or colour) and the question that counts them."""
    if by_kind:
        kind = rng.choice(KINDS)
        fixed = [_Spec(kind, c, rng.choice(_SIZE_NAMES)) for c in rng.sample(_COLOUR_NAMES, count)]
        scene = _random_scene(rng, fixed, allowed=lambda k, c: k != kind)
        return scene, _TEMPLATES["count_kind"].format(plural=kind + "s")
    colour = rng.choice(_COLOUR_NAMES)
    fixed = [_Spec(k, colour, rng.choice(_SIZE_NAMES)) for k in rng.sample(KINDS, count)]
    scene = _random_scene(rng, fixed, allowed=lambda k, c: c != colour)
    return scene, _TEMPLATES["count_colour"].format(colour=colour)


def _separated(a: Shape, b: Shape, axis: int) -> bool:
    """Whether shape a ends, with a gap, before shape b starts along the axis (0 = x, 1 = y)."""
    return a.bbox[axis + 2] + _GAP <= b.bbox[axis]


# relation word -> whether (a, b) clearly stand in it ("a is left of b"); y grows downwards.
_RELATIONS: dict[str, Callable[[Shape, Shape], bool]] = {
    "left": lambda a, b: _separated(a, b, 0),
    "right": lambda a, b: _separated(b, a, 0),
    "above": lambda a, b: _separated(a, b, 1),
    "below": lambda a, b: _separated(b, a, 1),
}
_AXIS_WORDS = {"left_right": ("left", "right"), "above_below": ("above", "below")}


def _pairs(scene: Scene, holds: Callable[[Shape, Shape], bool]) -> list[tuple[Shape, Shape]]:
    return [(a, b) for a in scene.shapes for b in scene.shapes if a is not b and holds(a, b)]


def _distance(shape: Shape, point: tuple[float, float]) -> float:
    return math.hypot(shape.x - point[0], shape.y - point[1])


def _attribute(rng: random.Random, subtype: str, split: str) -> _Draft:
    if subtype == "colour":
        colour = rng.choice(_COLOUR_NAMES)

        def attempt() -> _Draft:
            kind = rng.choice(KINDS)
            target = _Spec(kind, colour, rng.choice(_SIZE_NAMES))
            scene = _random_scene(rng, [target], allowed=lambda k, c: k != kind)
            return _Draft(scene, _TEMPLATES["colour"].format(kind=kind), colour)

    elif subtype == "shape":
        kind = rng.choice(KINDS)

        def attempt() -> _Draft:
            colour = rng.choice(_COLOUR_NAMES)
            target = _Spec(kind, colour, rng.choice(_SIZE_NAMES))
            scene = _random_scene(rng, [target], allowed=lambda k, c: c != colour)
            return _Draft(scene, _TEMPLATES["shape"].format(colour=colour), kind)

    else:
        size = rng.choice(_SIZE_NAMES)

        def attempt() -> _Draft:
            target = _Spec(rng.choice(KINDS), rng.choice(_COLOUR_NAMES), size)
            scene = _random_scene(rng, [target])
            return _Draft(scene, _TEMPLATES["size"].format(a=f"{target.colour} {target.kind}"), size)

    return _retry(attempt, split)


def _counting(rng: random.Random, subtype: str, split: str) -> _Draft:
    count = rng.randint(0, MAX_COUNT)

    def attempt() -> _Draft:
        scene, question = _counting_scene(rng, subtype == "count_kind", count)
        return _Draft(scene, question, str(count))

    return _retry(attempt, split)


def _spatial(rng: random.Random, subtype: str, split: str) -> _Draft:
    answer = rng.choice(_AXIS_WORDS[subtype])

    def attempt() -> _Draft | None:
        scene = _random_scene(rng)
        pairs = _pairs(scene, _RELATIONS[answer])
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return _Draft(scene, _TEMPLATES[subtype].format(a=a.name, b=b.name), answer)

    return _retry(attempt, split)


def _comparison(rng: random.Random, subtype: str, split: str) -> _Draft:
    first = rng.random() < 0.5  # whether the first named shape is the answer
    point_name = rng.choice(tuple(POINTS))
    point = POINTS[point_name]

    def wins(p: Shape, q: Shape) -> bool:
        """Whether p clearly beats q; the two must differ in colour, since the answer is a colour."""
        if p.colour == q.colour:
            return False
        if subtype == "bigger":
            return SIZES[p.size] > SIZES[q.size]
        return _distance(q, point) - _distance(p, point) >= _MARGIN

    def attempt() -> _Draft | None:
        scene = _random_scene(rng)
        pairs = _pairs(scene, wins)
        if not pairs:
            return None
        winner, loser = rng.choice(pairs)
        a, b = (winner, loser) if first else (loser, winner)
        question = _TEMPLATES[subtype].format(a=a.name, b=b.name, point=point_name)
        return _Draft(scene, question, winner.colour)

    return _retry(attempt, split)


def _existence(rng: random.Random, subtype: str, split: str) -> _Draft:
    present = rng.random() < 0.5

    def attempt() -> _Draft | None:
        scene = _random_scene(rng)
        if present:
            name = rng.choice(scene.shapes).name
        else:
            pairs = {(s.kind, s.colour) for s in scene.shapes}
            kinds, colours = {s.kind for s in scene.shapes}, {s.colour for s in scene.shapes}
            absent = [(k, c) for k in KINDS for c in _COLOUR_NAMES if (k, c) not in pairs]
            if subtype == "popular":  # a kind of the scene in a colour that is nowhere in it
                absent = [(k, c) for k, c in absent if k in kinds and c not in colours]
            elif subtype == "adversarial":  # the kind of one shape in the colour of another
                absent = [(k, c) for k, c in absent if k in kinds and c in colours]
            if not absent:
                return None
            kind, colour = rng.choice(absent)
            name = f"{colour} {kind}"
        return _Draft(scene, _TEMPLATES["exists"].format(a=name), "yes" if present else "no")

    return _retry(attempt, split)


def _multiple_choice(rng: random.Random, subtype: str, split: str) -> _Draft:
    """Multiple choice; the attempts give the stem, the correct option text and the distractors."""
    if subtype == "count":
        count, by_kind = rng.randint(0, MAX_COUNT), rng.random() < 0.5
        others = [str(n) for n in range(MAX_COUNT + 1) if n != count]

        def attempt() -> _Draft | None:
            scene, question = _counting_scene(rng, by_kind, count)
            return _Draft(scene, question, str(count), tuple(rng.sample(others, len(LETTERS) - 1)))

    elif subtype == "relation":
        answer = rng.choice(tuple(_RELATIONS))
        other = next(w for pair in _AXIS_WORDS.values() if answer in pair for w in pair if w != answer)

        def attempt() -> _Draft | None:
            scene = _random_scene(rng)
            pairs = _pairs(scene, _RELATIONS[answer])
            if not pairs:
                return None
            a, b = rng.choice(pairs)
            return _Draft(scene, _TEMPLATES["relation"].format(a=a.name, b=b.name), answer, (other,))

    else:

        def attempt() -> _Draft | None:
            scene = _random_scene(rng)
            triples = [
                (near, far, ref)
                for ref in scene.shapes
                for near in scene.shapes
                for far in scene.shapes
                if len({near, far, ref}) == 3
                and _distance(far, (ref.x, ref.y)) - _distance(near, (ref.x, ref.y)) >= _MARGIN
            ]
            if not triples:
                return None
            near, far, ref = rng.choice(triples)
            return _Draft(scene, _TEMPLATES["distance"].format(c=ref.name), near.name, (far.name,))

    draft = _retry(attempt, split)
    options = list(draft.options or ())
    letter = rng.randint(0, len(options))
    options.insert(letter, draft.answer)
    lines = [
        _TEMPLATES["option"].format(marker=marker, text=text)
        for marker, text in zip(OPTION_MARKERS[: len(options)], options, strict=True)
    ]
    question = "\n".join([draft.question, *lines, _TEMPLATES["letter"]])
    answer = _TEMPLATES["option"].format(marker=OPTION_MARKERS[letter], text=draft.answer)
    return _Draft(draft.scene, question, answer, tuple(options))


_BUILDERS: dict[Family, Callable[[random.Random, str, str], _Draft]] = {
    Family.ATTRIBUTE: _attribute,
    Family.COUNTING: _counting,
    Family.SPATIAL: _spatial,
    Family.COMPARISON: _comparison,
    Family.EXISTENCE: _existence,
    Family.MULTIPLE_CHOICE: _multiple_choice,
}


def _families(families: Sequence[Family | str] | None) -> tuple[Family, ...]:
    if families is None:
        return tuple(Family)
    if isinstance(families, (str, Family)):
        raise TypeError(f"families must be a sequence of families, not the single value {families!r}")
    valid = [f.value for f in Family]
    chosen = []
    for family in families:
        if family not in valid:  # a Family is a str, so members pass too
            raise ValueError(f"unknown question family {family!r}; expected one of {valid}")
        chosen.append(Family(family))
    if not chosen:
        raise ValueError("families is empty; pass None for every family")
    return tuple(chosen)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an int >= {_MIN_IMAGE_SIZE} (smaller shapes are unreadable), got {image_size!r}"
        )


def make_sample(
    split: str,
    index: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    families: Sequence[Family | str] | None = None,
) -> Sample:
    """The sample at ``index`` of a split, rebuilt from ``(seed, split, index)`` alone.

    Families take turns (``families[index % len(families)]``), so every family gets the same share.
    """
    _check_split(split)
    _check_image_size(image_size)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    chosen = _families(families)
    rng = random.Random(_stable_hash(f"{seed}/{split}/{index}"))
    family = chosen[index % len(chosen)]
    subtype = rng.choice(tuple(_SUBTYPES[family]))
    draft = _BUILDERS[family](rng, subtype, split)
    return Sample(
        id=f"{split}_{seed}_{index:06d}",
        split=split,
        family=family,
        subtype=subtype,
        question=draft.question,
        answer=draft.answer,
        options=draft.options,
        scene=draft.scene,
        image=render(draft.scene, image_size),
    )


def generate_split(
    split: str,
    n: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    families: Sequence[Family | str] | None = None,
) -> list[Sample]:
    """Samples 0 .. n-1 of a split (see `make_sample`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_sample(split, i, seed=seed, image_size=image_size, families=families) for i in range(n)]


def write_split(
    out_dir: str | Path,
    split: str,
    n: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    families: Sequence[Family | str] | None = None,
) -> SplitFiles:
    """Write n samples as PNGs, a LLaVA-format question JSONL and a caption JSONL for pre-training.

    Files: ``out_dir/images/<id>.png``, ``out_dir/<split>.jsonl`` (one `Sample.to_llava` record per
    line) and ``out_dir/<split>_captions.jsonl`` (``{"id", "image", "caption"}``); image paths are
    relative to ``out_dir``.
    """
    _check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    files = SplitFiles(out / f"{split}.jsonl", out / f"{split}_captions.jsonl", out / "images")
    files.images.mkdir(parents=True, exist_ok=True)
    with files.questions.open("w") as questions, files.captions.open("w") as captions:
        for index in range(n):
            sample = make_sample(split, index, seed=seed, image_size=image_size, families=families)
            image_path = f"images/{sample.id}.png"
            sample.image.save(out / image_path)
            questions.write(json.dumps(sample.to_llava(image_path)) + "\n")
            captions.write(
                json.dumps({"id": sample.id, "image": image_path, "caption": caption(sample.scene)}) + "\n"
            )
    return files
