"""Test helpers of the AKI model tests: images and chat messages."""

from __future__ import annotations

import numpy as np
from PIL import Image


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def user(*items: str | Image.Image) -> dict:
    """A user message; an image item stands for one ``<image>``."""
    content = [
        {"type": "text", "text": item} if isinstance(item, str) else {"type": "image", "image": item}
        for item in items
    ]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def images_of(chat: list[dict]) -> list[Image.Image]:
    return [
        item["image"]
        for m in chat
        if isinstance(m["content"], list)
        for item in m["content"]
        if item["type"] == "image"
    ]
