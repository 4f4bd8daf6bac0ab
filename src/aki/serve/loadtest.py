"""A bounded concurrent load on an OpenAI-compatible server, checking that batching changes no answer.

First every distinct request is sent alone, one after another: those are the reference answers. Then
``clients`` threads send ``requests`` requests in all (the distinct ones in turn), each thread one request at a
time, and every answer is compared with the reference of its request. Greedy decoding (``temperature`` 0) makes
the answers deterministic, so any difference is a batching bug.

Run: ``python -m aki.serve.loadtest http://127.0.0.1:8000 --clients 8 --requests 64`` (prints one JSON line;
exit code 1 on a mismatch or an error). It imports nothing from ``aki``, so ``python path/to/loadtest.py`` starts
without loading torch.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

QUESTIONS = [
    "What is this?",
    "What colour is the shape at the top left?",
    "How many shapes are there?",
    "Is the red circle bigger than the blue square?",
    "Describe the image.",
    "Which shape is closer to the bottom right corner of the image?",
]


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def served_model(url: str, *, timeout: float = 30.0) -> str:
    """The model id the server lists first under ``/v1/models``."""
    response = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def request_bodies(
    count: int, *, max_tokens: int = 16, seed: int = 0, model: str = "aki"
) -> list[dict[str, Any]]:
    """``count`` distinct greedy chat requests of different lengths; two in three carry a random image."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(count):
        question = " ".join(QUESTIONS[j % len(QUESTIONS)] for j in range(i, i + 1 + i % 3))
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        if i % 3:
            pixels = rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)
            content.insert(0, {"type": "image_url", "image_url": {"url": data_url(Image.fromarray(pixels))}})
        messages = [{"role": "user", "content": content}]
        bodies.append({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    return bodies


@dataclass
class LoadResult:
    """What one load run measured."""

    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the latencies (``statistics.quantiles``, inclusive method)."""
        cuts = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return cuts[round(q) - 1]

    def summary(self) -> dict[str, Any]:
        record = {key: value for key, value in asdict(self).items() if key != "latencies_ms"}
        return record | {
            "requests_per_s": round(self.requests_per_s, 2),
            "p50_ms": round(self.percentile_ms(50), 1),
            "p95_ms": round(self.percentile_ms(95), 1),
        }


def answer(client: httpx.Client, url: str, body: dict[str, Any]) -> str:
    response = client.post(f"{url.rstrip('/')}/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def send_and_leave_open(url: str, body: dict[str, Any]) -> socket.socket:
    """A chat request on a raw socket, left open: closing the returned socket is the client leaving."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    data = json.dumps(body).encode()
    connection = socket.create_connection((host, int(port)))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    connection.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return connection


def reference_answers(url: str, bodies: list[dict[str, Any]], *, timeout: float = 60.0) -> list[str]:
    """Each request sent alone, one after another."""
    with httpx.Client(timeout=timeout) as client:
        return [answer(client, url, body) for body in bodies]


def run_load(
    url: str,
    bodies: list[dict[str, Any]],
    *,
    clients: int,
    requests: int,
    expected: list[str] | None = None,
    timeout: float = 60.0,
) -> LoadResult:
    """``requests`` requests from ``clients`` threads (request ``i`` is ``bodies[i % len(bodies)]``)."""
    result = LoadResult(clients=clients, requests=requests, seconds=0.0)
    lock = threading.Lock()
    counter = iter(range(requests))

    def client_loop() -> None:
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    text = answer(client, url, bodies[index % len(bodies)])
                except (httpx.HTTPError, KeyError, ValueError) as error:
                    with lock:
                        result.errors.append(f"request {index}: {type(error).__name__}: {error}")
                    continue
                elapsed = (time.perf_counter() - start) * 1e3
                with lock:
                    result.latencies_ms.append(elapsed)
                    if expected is not None and text != expected[index % len(bodies)]:
                        result.mismatches.append(
                            f"request {index}: {text!r} != alone {expected[index % len(bodies)]!r}"
                        )

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout * requests)
    result.seconds = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Concurrent load that checks batched answers equal lone ones."
    )
    parser.add_argument("url", help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="requests in all")
    parser.add_argument("--distinct", type=int, default=6, help="distinct requests, cycled")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    bodies = request_bodies(args.distinct, max_tokens=args.max_tokens, model=served_model(args.url))
    expected = reference_answers(args.url, bodies, timeout=args.timeout)
    result = run_load(
        args.url,
        bodies,
        clients=args.clients,
        requests=args.requests,
        expected=expected,
        timeout=args.timeout,
    )
    print(json.dumps(result.summary()))
    return 1 if result.mismatches or result.errors or len(result.latencies_ms) != args.requests else 0


if __name__ == "__main__":
    sys.exit(main())
