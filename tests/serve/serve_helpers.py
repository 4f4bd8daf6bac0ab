"""Helpers of the serving tests: the test questions, images, chat messages and a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import uvicorn
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


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free port of 127.0.0.1, in a thread; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = running.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server did not shut down"


def wait_until(condition, *, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
