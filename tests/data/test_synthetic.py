"""Specification of aki.data.synthetic: deterministic scenes, disjoint splits, answers that the pixels prove.

The answer oracle here reads every rendered image on its own (connected components, hue, fill ratio,
pixel area, pixel centre) and answers each question from that reading, so a wrong answer, an
ambiguous referent or a mis-drawn shape in the generator fails a test.
"""

import colorsys
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from aki.data import synthetic
from aki.data.synthetic import (
    Family,
    Scene,
    Shape,
    caption,
    chance_level,
    generate_split,
    location,
    make_sample,
    render,
    split_of,
    vocabulary,
    words,
    write_split,
)

SIZE = 64
PER_FAMILY = 500


@pytest.fixture(scope="module")
def train():
    return generate_split("train", 6 * PER_FAMILY, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return generate_split("validation", 600, seed=0) + generate_split("test", 600, seed=0)


# ---------------------------------------------------------------- an independent reading of the pixels

HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 125, "cyan": 187, "blue": 227, "purple": 280}
AREA_THRESHOLDS = (0.022, 0.045)  # fractions of the image: small < 0.022 <= medium < 0.045 <= large
POINTS = {
    "the top left corner": (0, 0),
    "the top right corner": (1, 0),
    "the bottom left corner": (0, 1),
    "the bottom right corner": (1, 1),
    "the middle": (0.5, 0.5),
}


def colour_name(rgb) -> str:
    """Name of a colour from its hue (white: unsaturated and bright)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if saturation < 0.2:
        return "white" if value > 0.8 else "grey"
    name, distance = min(
        ((n, min(abs(hue * 360 - h), 360 - abs(hue * 360 - h))) for n, h in HUES.items()), key=lambda t: t[1]
    )
    return name if distance < 20 else "unknown"


def kind_name(mask: np.ndarray) -> str:
    """Kind of a filled shape from its fill ratio, aspect and the widths of its top and bottom rows."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    fill = mask.sum() / (height * width)
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    if mask[rows[-1]].sum() / width > 0.8:
        return "triangle"
    if height / width > 1.15:
        return "diamond"
    return "star"


def label(foreground: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = background) by propagating the largest pixel id."""
    size = foreground.shape[0]
    labels = np.where(foreground, np.arange(1, size * size + 1).reshape(size, size), 0)
    while True:
        padded = np.pad(labels, 1)
        grown = np.max([padded[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)], axis=0)
        grown = np.where(foreground, grown, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


@dataclass
class Seen:
    """One shape as read from the pixels."""

    colour: str
    kind: str
    size: str
    x: float  # centre of the pixel bounding box, image fractions
    y: float
    area: float  # pixel count / image area

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


def read_image(image: Image.Image) -> list[Seen]:
    pixels = np.asarray(image)
    size = pixels.shape[0]
    labels = label(np.any(pixels != pixels[0, 0], axis=2))  # the corners are always background
    seen = []
    for value in np.unique(labels[labels > 0]):
        mask = labels == value
        colours = np.unique(pixels[mask], axis=0)
        assert len(colours) == 1, f"one component holds {len(colours)} colours: shapes touch"
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        area = mask.sum() / size**2
        size_name = (
            "small" if area < AREA_THRESHOLDS[0] else "medium" if area < AREA_THRESHOLDS[1] else "large"
        )
        x, y = (cols[0] + cols[-1] + 1) / 2 / size, (rows[0] + rows[-1] + 1) / 2 / size
        seen.append(Seen(colour_name(colours[0]), kind_name(mask), size_name, x, y, area))
    return seen


def only(matches: list[Seen], description: str) -> Seen:
    assert len(matches) == 1, f"{description!r} describes {len(matches)} shapes"
    return matches[0]


def the(seen: list[Seen], name: str) -> Seen:
    return only([s for s in seen if s.name == name], name)


def relation_holds(word: str, a: Seen, b: Seen) -> bool:
    """a is clearly (by 0.1 of the image) left of / right of / above / below b."""
    dx, dy = a.x - b.x, a.y - b.y
    return {"left": dx < -0.1, "right": dx > 0.1, "above": dy < -0.1, "below": dy > 0.1}[word]


def closer(point, first: Seen, second: Seen) -> Seen:
    d1, d2 = (math.hypot(s.x - point[0], s.y - point[1]) for s in (first, second))
    assert abs(d1 - d2) >= 0.08, f"distances {d1:.3f} and {d2:.3f} are too close to compare"
    return first if d1 < d2 else second


def answer_from_pixels(question: str, seen: list[Seen]) -> str:
    """Answer a generated question from the pixel reading alone."""
    stem, *rest = question.split("\n")
    if rest:
        assert rest[-1] == "answer with the option and its letter."
        options = [re.fullmatch(r"(.+) \(([A-D])\)", line).groups() for line in rest[:-1]]
        assert [letter for _, letter in options] == list("ABCD"[: len(options)])
        texts = [text for text, _ in options]
        if m := re.fullmatch(r"where is the (\w+ \w+) relative to the (\w+ \w+)\?", stem):
            a, b = the(seen, m[1]), the(seen, m[2])
            correct = [text for text in texts if relation_holds(text, a, b)]
        elif m := re.fullmatch(r"which shape is closer to the (\w+ \w+)\?", stem):
            ref = the(seen, m[1])
            correct = [closer((ref.x, ref.y), the(seen, texts[0]), the(seen, texts[1])).name]
        else:
            correct = [answer_from_pixels(stem, seen)]
        assert len(correct) == 1 and texts.count(correct[0]) == 1, f"options {texts} for {stem!r}"
        return rest[texts.index(correct[0])]  # the option line, text then letter
    if m := re.fullmatch(r"what colour is the (\w+)\?", stem):
        return only([s for s in seen if s.kind == m[1]], m[1]).colour
    if m := re.fullmatch(r"which shape is (\w+)\?", stem):
        return only([s for s in seen if s.colour == m[1]], m[1]).kind
    if m := re.fullmatch(r"what size is the (\w+ \w+)\?", stem):
        return the(seen, m[1]).size
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", stem):
        return str(sum(s.colour == m[1] for s in seen))
    if m := re.fullmatch(r"how many (\w+)s are there\?", stem):
        return str(sum(s.kind == m[1] for s in seen))
    if m := re.fullmatch(r"is the (\w+ \w+) (left or right of|above or below) the (\w+ \w+)\?", stem):
        a, b = the(seen, m[1]), the(seen, m[3])
        (word,) = [w for w in m[2].removesuffix(" of").split(" or ") if relation_holds(w, a, b)]
        return word
    if m := re.fullmatch(r"which is bigger, the (\w+ \w+) or the (\w+ \w+)\?", stem):
        a, b = the(seen, m[1]), the(seen, m[2])
        big, small = (a, b) if a.area > b.area else (b, a)
        assert big.area > 1.5 * small.area and big.colour != small.colour
        return big.colour
    if m := re.fullmatch(r"which is closer to (.+), the (\w+ \w+) or the (\w+ \w+)\?", stem):
        a, b = the(seen, m[2]), the(seen, m[3])
        assert a.colour != b.colour
        return closer(POINTS[m[1]], a, b).colour
    if m := re.fullmatch(r"is there a (\w+ \w+) in the image\?", stem):
        return "yes" if any(s.name == m[1] for s in seen) else "no"
    raise AssertionError(f"no template matches {stem!r}")


def check_scene_matches_pixels(scene: Scene, seen: list[Seen]) -> None:
    """Every listed shape is drawn where the scene says, as what it says, and nothing else is drawn."""
    assert len(seen) == len(scene.shapes)
    for shape in scene.shapes:
        match = the(seen, shape.name)
        assert (match.kind, match.colour, match.size) == (shape.kind, shape.colour, shape.size)
        assert abs(match.x - shape.x) <= 1.5 / SIZE and abs(match.y - shape.y) <= 1.5 / SIZE


# ---------------------------------------------------------------- tests of the pixel reading itself


@pytest.mark.parametrize("size", ["small", "medium", "large"])
@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_each_kind_and_size_reads_back_from_pixels(kind, size):
    for colour in synthetic.COLOURS:
        (seen,) = read_image(render(Scene((Shape(kind, colour, size, 0.5, 0.5),)), SIZE))
        assert (seen.kind, seen.colour, seen.size) == (kind, colour, size)
        assert (seen.x, seen.y) == pytest.approx((0.5, 0.5), abs=1 / SIZE)


def test_render_draws_palette_colours_on_the_background():
    scene = Scene((Shape("circle", "red", "small", 0.2, 0.2), Shape("square", "white", "large", 0.6, 0.7)))
    pixels = np.asarray(render(scene, SIZE))
    assert pixels.shape == (SIZE, SIZE, 3)
    assert tuple(pixels[0, 0]) == tuple(pixels[-1, -1]) == synthetic.BACKGROUND
    assert tuple(pixels[int(0.2 * SIZE), int(0.2 * SIZE)]) == (220, 40, 40)
    assert tuple(pixels[int(0.7 * SIZE), int(0.6 * SIZE)]) == (240, 240, 240)
    # A large square has 0.23**2 of the image area: 216.7 pixels at 64 px, drawn with its edge pixels.
    assert 216 <= (pixels == (240, 240, 240)).all(axis=2).sum() <= 1.25 * 216.7


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_samples_and_image_bytes():
    first, second = generate_split("train", 60, seed=5), generate_split("train", 60, seed=5)
    assert [s.to_json() for s in first] == [s.to_json() for s in second]
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in second]
    # Random access rebuilds the same sample from (seed, split, index) alone.
    assert make_sample("train", 37, seed=5).to_json() == first[37].to_json()


def test_different_seed_gives_different_samples():
    a, b = generate_split("train", 60, seed=0), generate_split("train", 60, seed=1)
    assert sum(x.question != y.question for x, y in zip(a, b, strict=True)) >= 50
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, b, strict=True)) == 60


def test_same_samples_in_a_fresh_process_with_another_hash_seed():
    """Nothing depends on Python's per-process string hashing (PYTHONHASHSEED)."""
    script = (
        "import hashlib, importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('synthetic', sys.argv[1])\n"
        "module = sys.modules['synthetic'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "samples = module.generate_split('test', 30, seed=2)\n"
        "h = hashlib.sha256()\n"
        "for s in samples: h.update(json.dumps(s.to_json()).encode() + s.image.tobytes())\n"
        "print(h.hexdigest())\n"
    )
    expected = hashlib.sha256()
    for s in generate_split("test", 30, seed=2):
        expected.update(json.dumps(s.to_json()).encode() + s.image.tobytes())
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", script, synthetic.__file__],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected.hexdigest()


def test_image_size_changes_pixels_not_scenes_or_questions():
    small, large = make_sample("validation", 3, image_size=32), make_sample("validation", 3, image_size=96)
    assert small.to_json() == large.to_json()
    assert (small.image.size, large.image.size) == ((32, 32), (96, 96))


# ---------------------------------------------------------------- splits


def signature(scene: Scene) -> tuple:
    """What a caption says about a scene: the multiset of (size, colour, kind, 3 x 3 cell)."""
    return tuple(
        sorted((s.size, s.colour, s.kind, min(int(s.y * 3), 2), min(int(s.x * 3), 2)) for s in scene.shapes)
    )


def test_splits_never_share_a_scene(train, held_out):
    by_split = {"train": train, "validation": held_out[:600], "test": held_out[600:]}
    signatures = {name: {signature(s.scene) for s in samples} for name, samples in by_split.items()}
    captions = {name: {caption(s.scene) for s in samples} for name, samples in by_split.items()}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not signatures[a] & signatures[b], f"{a} and {b} share a scene"
        assert not captions[a] & captions[b], f"{a} and {b} share a caption"
    for name, samples in by_split.items():
        assert all(s.split == name == split_of(s.scene) for s in samples)
    assert len(signatures["train"]) > 0.99 * len(train)  # and scenes hardly repeat within a split


# ---------------------------------------------------------------- answers checked against the pixels


@pytest.mark.parametrize("family", list(Family))
def test_every_answer_follows_from_the_pixels(family):
    samples = generate_split("validation", 100, seed=3, families=[family])
    for sample in samples:
        seen = read_image(sample.image)
        check_scene_matches_pixels(sample.scene, seen)
        assert synthetic.MIN_SHAPES <= len(seen) <= synthetic.MAX_SHAPES
        assert answer_from_pixels(sample.question, seen) == sample.answer, sample.question
        assert sample.family is family


def test_bounding_boxes_are_inside_the_image_and_apart(train):
    for sample in train[:600]:
        boxes = [s.bbox for s in sample.scene.shapes]
        assert all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for x0, y0, x1, y1 in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert gap >= 0.03 - 1e-9


# ---------------------------------------------------------------- balance and chance


def assert_uniform(counts: Counter, values) -> None:
    """Chi-square test of uniformity at p = 0.001 (critical values for 1..7 degrees of freedom)."""
    critical = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}
    assert set(counts) == set(values), f"answers {sorted(counts)} != {sorted(values)}"
    expected = sum(counts.values()) / len(values)
    statistic = sum((counts[v] - expected) ** 2 / expected for v in values)
    assert statistic < critical[len(values) - 1], f"not uniform: {dict(counts)}"


def answer_position(sample) -> str:
    """For comparison questions: whether the answer is the colour of the first or the second named shape."""
    first, second = re.search(r"the (\w+) \w+ or the (\w+) \w+\?", sample.question).groups()
    return "first" if sample.answer == first else "second" if sample.answer == second else "neither"


def test_families_subtypes_and_answers_are_balanced(train):
    assert Counter(s.family for s in train) == dict.fromkeys(Family, PER_FAMILY)
    answer_sets = {
        "colour": list(synthetic.COLOURS),
        "shape": list(synthetic.KINDS),
        "size": ["small", "medium", "large"],
        "count_kind": list("01234"),
        "count_colour": list("01234"),
        "left_right": ["left", "right"],
        "above_below": ["above", "below"],
        "random": ["yes", "no"],
        "popular": ["yes", "no"],
        "adversarial": ["yes", "no"],
        "count": list("ABCD"),
        "relation": list("AB"),
        "distance": list("AB"),
    }
    for family in Family:
        samples = [s for s in train if s.family is family]
        subtypes = Counter(s.subtype for s in samples)
        assert_uniform(subtypes, list(subtypes))
        for subtype in subtypes:
            of_subtype = [s for s in samples if s.subtype == subtype]
            if family is Family.COMPARISON:
                assert_uniform(Counter(answer_position(s) for s in of_subtype), ["first", "second"])
            elif family is Family.MULTIPLE_CHOICE:  # the letter closing the written-out option
                letters = Counter(re.fullmatch(r".+ \(([A-D])\)", s.answer)[1] for s in of_subtype)
                assert_uniform(letters, answer_sets[subtype])
            else:
                assert_uniform(Counter(s.answer for s in of_subtype), answer_sets[subtype])


def test_chance_levels_by_hand(train):
    assert chance_level("attribute") == pytest.approx((1 / 8 + 1 / 5 + 1 / 3) / 3)  # 79 / 360
    assert chance_level(Family.COUNTING) == pytest.approx(1 / 5)
    assert chance_level("spatial") == chance_level("comparison") == chance_level("existence") == 0.5
    assert chance_level("multiple_choice") == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / 3)  # 5 / 12
    # The blind strategies behind two of them score close to that on generated data.
    mc = [s for s in train if s.family is Family.MULTIPLE_CHOICE]
    assert sum(s.answer.endswith("(A)") for s in mc) / len(mc) == pytest.approx(5 / 12, abs=0.07)
    existence = [s for s in train if s.family is Family.EXISTENCE]
    assert sum(s.answer == "yes" for s in existence) / len(existence) == pytest.approx(0.5, abs=0.07)
    with pytest.raises(ValueError, match="unknown question family 'ocr'"):
        chance_level("ocr")


# ---------------------------------------------------------------- captions and vocabulary


def test_caption_lists_every_shape_by_colour_then_kind():
    scene = Scene(
        (
            Shape("circle", "red", "small", 0.15, 0.15),
            Shape("square", "blue", "large", 0.5, 0.5),
            Shape("star", "green", "medium", 0.85, 0.9),
            Shape("circle", "blue", "medium", 0.85, 0.15),
        )
    )
    assert caption(scene) == (
        "red circle, small, at the top left. green star, medium, at the bottom right. "
        "blue circle, medium, at the top right. blue square, large, in the middle."
    )
    assert scene.signature() == (
        "a large blue square in the middle; a medium blue circle at the top right; "
        "a medium green star at the bottom right; a small red circle at the top left"
    )
    assert location(Shape("diamond", "cyan", "small", 0.3333, 0.5)) == "on the left"
    assert location(Shape("diamond", "cyan", "small", 0.34, 0.66)) == "in the middle"
    assert location(Shape("diamond", "cyan", "small", 0.9, 0.6)) == "on the right"


def test_vocabulary_covers_exactly_the_generated_text(train):
    used = Counter()
    for s in train:
        for text in (s.question, s.answer, caption(s.scene), *(s.options or ())):
            used.update(words(text))
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    assert set(used) == set(vocab)
    assert words("which is bigger, the red circle?\n(A) 3") == [
        *("which", "is", "bigger", ",", "the", "red", "circle", "?"),
        *("(A)", "3"),  # an option marker is one token
    ]
    assert len(vocab) < 100


# ---------------------------------------------------------------- files


def test_write_split_round_trips_through_jsonl_and_png(tmp_path):
    samples = generate_split("validation", 12, seed=4, image_size=48)
    files = write_split(tmp_path, "validation", 12, seed=4, image_size=48)
    records = [json.loads(line) for line in files.questions.read_text().splitlines()]
    captions = [json.loads(line) for line in files.captions.read_text().splitlines()]
    assert len(records) == len(captions) == 12
    for sample, record, line in zip(samples, records, captions, strict=True):
        assert record["image"] == line["image"] == f"images/validation_4_{samples.index(sample):06d}.png"
        assert record["conversations"] == [
            {"from": "human", "value": "<image>\n" + sample.question},
            {"from": "gpt", "value": sample.answer},
        ]
        assert {k: v for k, v in record.items() if k not in ("image", "conversations")} == sample.to_json()
        assert record["family"] in [f.value for f in Family] and record["answer"] == sample.answer
        with Image.open(tmp_path / record["image"]) as image:
            assert image.mode == "RGB" and image.tobytes() == sample.image.tobytes()
        scene = Scene.from_dict(record["scene"])
        assert scene == sample.scene and render(scene, 48).tobytes() == sample.image.tobytes()
        assert line == {"id": sample.id, "image": record["image"], "caption": caption(sample.scene)}
    assert sorted(p.name for p in files.images.iterdir()) == sorted(r["image"][7:] for r in records)


# ---------------------------------------------------------------- errors


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_sample("dev", 0)
    with pytest.raises(ValueError, match="unknown question family 'colour'"):
        generate_split("train", 2, families=["colour"])
    with pytest.raises(ValueError, match="families is empty"):
        generate_split("train", 2, families=[])
    with pytest.raises(ValueError, match=r"image_size must be an int >= 32 .*got 16"):
        make_sample("train", 0, image_size=16)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        generate_split("train", -1)
    with pytest.raises(ValueError, match="unknown kind 'hexagon'"):
        Shape("hexagon", "red", "small", 0.5, 0.5)
    assert [s.family for s in generate_split("test", 4, families=["spatial", Family.EXISTENCE])] == [
        Family.SPATIAL,
        Family.EXISTENCE,
    ] * 2
