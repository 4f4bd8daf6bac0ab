"""Horizontal flips that keep the text true: images are mirrored together with their left/right words and boxes.

The reference flipped images without touching the text, so "the cup on the left" became false for half of
the flipped samples. Here a flip mirrors every image of a sample and rewrites every text of it: ``left`` and
``right`` (and ``leftmost`` / ``rightmost``, ``left-hand`` ...) swap, with their case kept, and every box
``[x1, y1, x2, y2]`` is mirrored: ``x -> 1 - x`` for normalised boxes (all four values in ``[0, 1]``), and
``x -> width - x`` for pixel boxes, with ``width`` the width of the sample's first image.

Example:
    >>> flip_text("the dog left of the car [0.1, 0.2, 0.3, 0.4]", image_width=100)
    'the dog right of the car [0.7, 0.2, 0.9, 0.4]'
"""

from __future__ import annotations

import re

from PIL import Image

_SIDE_WORD = re.compile(r"\b(left|right)(?=(?:most|ward|wards)?\b)", re.IGNORECASE)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_SWAP = {"left": "right", "right": "left"}


def _swap_side(match: re.Match[str]) -> str:
    word = match.group(1)
    swapped = _SWAP[word.lower()]
    if word.isupper():
        return swapped.upper()
    return swapped.capitalize() if word[0].isupper() else swapped


def _format_like(value: float, template: str) -> str:
    """``value`` written with as many decimals as ``template`` has (an integer stays an integer)."""
    decimals = len(template.split(".")[1]) if "." in template else 0
    return f"{value:.{decimals}f}"


def _mirror_box(match: re.Match[str], image_width: float) -> str:
    texts = match.groups()
    x1, y1, x2, y2 = (float(t) for t in texts)
    width = 1.0 if all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) else image_width
    new_x1, new_x2 = width - x2, width - x1
    values = [
        _format_like(new_x1, texts[2]),
        texts[1].strip(),
        _format_like(new_x2, texts[0]),
        texts[3].strip(),
    ]
    return "[" + ", ".join(values) + "]"


def flip_text(text: str, *, image_width: float) -> str:
    """Rewrite ``text`` for a horizontally mirrored image: swap left/right words, mirror boxes."""
    text = _BOX.sub(lambda m: _mirror_box(m, image_width), text)
    return _SIDE_WORD.sub(_swap_side, text)


def flip_images(images: list[Image.Image]) -> list[Image.Image]:
    """Mirror every image left to right."""
    return [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]


__all__ = ["flip_images", "flip_text"]
