"""Helpers of the serving tests: the test questions, images, chat messages and a free port."""

from __future__ import annotations

import socket

import numpy as np
from PIL import Image

from aki.serve.loadtest import QUESTIONS

QUESTION = "What colour is the shape in the image?"
TEXTS = [*QUESTIONS, QUESTION, "And where is it? Describe it."]  # the tiny tokenizer's vocabulary


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def noise_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def user(text: str, *images: Image.Image) -> dict:
    content = [{"type": "image", "image": image} for image in images]
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}
