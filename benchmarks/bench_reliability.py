"""``aki serve`` under hostile-but-fair requests: memory and time to a 4xx, short-behind-long latency, abandonment.

The server is ``python -m aki.serve.cli serve`` in its own process on a freshly saved ``aki_tiny`` directory
whose end-of-sequence token is switched off (every answer runs to its ``max_tokens``, so a 900-token request
really generates 900 tokens). Measured, against the issue's goals:

* 30 PNGs of 4096 x 4096 (2 KB each) in one request: the server's peak RSS growth (``/proc/PID/status``
  ``VmHWM`` after ``clear_refs``; goal < 100 MB) and the time to its 4xx (goal < 1 s); for scale, the growth for
  one allowed 4096 x 4096 image, which is decoded;
* a 20 MB text prompt: time to its 4xx (goal < 1 s); a request of 500,000 text parts: time to its 4xx and the
  latency of a 2-token request sent meanwhile;
* a 2-token request's latency while a 900-token request runs, against its lone latency (goal <= 2x; medians
  of ``--repeats`` rounds in which 3 lone requests and 3 behind the long one alternate);
* a non-streaming client that leaves while its 900-token request runs: tokens generated after the connection
  closed (goal: none beyond the current step, i.e. at most one per running row), from ``/health``.

Run: ``python benchmarks/bench_reliability.py`` (about a minute) or ``--quick``. Run it three times and read the
ranges: the machine's other work moves every figure.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from _common import parse_args, report_check, report_ratio
from _serving import save_tiny_model, start_server
from aki.serve.loadtest import QUESTIONS, send_and_leave_open

LONG_TOKENS = 900
MODEL = "tiny"


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(text: str, *, images: tuple[str, ...] = (), max_tokens: int = 2) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    content = [*parts, {"type": "text", "text": text}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


_clients = threading.local()  # one keep-alive client per thread: latencies without connection set-up


def _client() -> httpx.Client:
    if not hasattr(_clients, "client"):
        _clients.client = httpx.Client(timeout=120.0)
    return _clients.client


def post(url: str, body: dict | bytes) -> tuple[int, float, dict]:
    """``(status, seconds, json)`` of one request."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.perf_counter()
    response = _client().post(
        f"{url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    return response.status_code, time.perf_counter() - started, response.json()


def health(url: str) -> dict:
    return _client().get(f"{url}/health").json()


def wait_for(condition, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def peak_growth_mb(pid: int, send) -> tuple[float, object]:
    """The process's peak RSS growth (MB) while ``send()`` runs, and what it returned."""
    status = Path(f"/proc/{pid}/status")

    def kib(field: str) -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith(field))
        return int(line.split()[1])

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = kib("VmRSS:")
    result = send()
    return (kib("VmHWM:") - before) / 1024, result


# --------------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------------


def oversized_requests(url: str, pid: int) -> dict[str, float]:
    figures = {}
    big = png_url(Image.new("1", (4096, 4096)))
    growth, (status, seconds, body) = peak_growth_mb(pid, lambda: post(url, chat("hi", images=(big,) * 30)))
    report_check("30 images of 4096 x 4096 get a 4xx", 400 <= status < 500, body["error"]["message"])
    figures |= {"30 x 4096^2 PNG: RSS growth MB": growth, "30 x 4096^2 PNG: seconds to 4xx": seconds}
    growth, (status, _, _) = peak_growth_mb(pid, lambda: post(url, chat("hi", images=(big,))))
    report_check("one 4096 x 4096 image is answered", status == 200, f"status {status}")
    figures["1 x 4096^2 PNG (allowed): RSS growth MB"] = growth

    status, seconds, body = post(url, chat("x" * 20_000_000))
    report_check("a 20 MB prompt gets a 4xx", 400 <= status < 500, body["error"]["message"][:90])
    figures["20 MB prompt: seconds to 4xx"] = seconds

    parts = [{"type": "text", "text": "a"}] * 500_000
    many = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": parts}]}).encode()
    result = {}
    worker = threading.Thread(target=lambda: result.update(refused=post(url, many)))
    worker.start()
    time.sleep(0.05)
    _, meanwhile, _ = post(url, chat(QUESTIONS[0]))
    worker.join()
    status, seconds, body = result["refused"]
    report_check("500,000 text parts get a 4xx", 400 <= status < 500, body["error"]["message"][:90])
    figures["500,000 parts: seconds to 4xx"] = seconds
    figures["2-token request meanwhile: seconds"] = meanwhile
    return figures


def short_behind_long(url: str, *, rounds: int) -> tuple[float, float]:
    """Median latency of a 2-token request alone and while a 900-token request runs; the two phases alternate
    over ``rounds`` rounds of 3 requests each (the long request is abandoned after each of its phases).
    """
    short = chat(QUESTIONS[1])
    expected = post(url, short)[2]["choices"][0]["message"]["content"]
    alone, behind, answers, overlapped = [], [], [], True
    for _ in range(rounds):
        alone += [post(url, short)[1] for _ in range(3)]
        long = send_and_leave_open(url, chat(QUESTIONS[2], max_tokens=LONG_TOKENS))
        wait_for(lambda: health(url)["running"] == 1)
        for _ in range(3):
            _, seconds, body = post(url, short)
            behind.append(seconds)
            answers.append(body["choices"][0]["message"]["content"])
        overlapped &= health(url)["running"] >= 1  # (a short row may not have left yet)
        long.close()
        wait_for(lambda: health(url)["running"] == 0)
    report_check(
        "the 2-token requests ran while the long one did, with their lone answer",
        overlapped and all(answer == expected for answer in answers),
        f"long still running after each phase: {overlapped}",
    )
    return statistics.median(alone), statistics.median(behind)


def abandoned(url: str) -> tuple[int, int, float, float]:
    """Of one 900-token request whose client closes the connection: tokens generated after the close, of them
    after the server cancelled it, seconds per token before the close, and seconds from the close until nothing
    runs (polling ``/health`` included).
    """
    start, wasted = health(url)["generated_tokens"], health(url)["tokens_after_cancel"]
    connection = send_and_leave_open(url, chat(QUESTIONS[3], max_tokens=LONG_TOKENS))
    wait_for(lambda: health(url)["generated_tokens"] - start >= 20)  # generating
    first, began = health(url)["generated_tokens"], time.perf_counter()
    wait_for(lambda: health(url)["generated_tokens"] - start >= 120)  # well into its answer
    at_close = health(url)["generated_tokens"]
    per_token = (time.perf_counter() - began) / max(at_close - first, 1)
    connection.close()
    closed = time.perf_counter()
    wait_for(lambda: health(url)["running"] == 0)
    stopped = time.perf_counter() - closed
    end = health(url)
    return end["generated_tokens"] - at_close, end["tokens_after_cancel"] - wasted, per_token, stopped


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=3)
    with tempfile.TemporaryDirectory(prefix="aki-bench-reliability-") as folder:
        save_tiny_model(Path(folder), ends_answers=False)
        server, url = start_server(Path(folder), ["--threads", str(args.threads), "--model-name", MODEL])
        try:
            post(url, chat(QUESTIONS[0]))  # warm-up
            figures = oversized_requests(url, server.pid)
            alone, behind = short_behind_long(url, rounds=args.repeats)
            after, after_cancel, per_token, stopped = abandoned(url)
        finally:
            server.terminate()
            server.wait(timeout=30)

    goals = {
        "30 x 4096^2 PNG: RSS growth MB": 100,
        "30 x 4096^2 PNG: seconds to 4xx": 1,
        "20 MB prompt: seconds to 4xx": 1,
    }
    print("\n## aki serve, tiny AKI, one server process")
    for label, value in figures.items():
        goal = goals.get(label)
        verdict = "" if goal is None else f"  [goal < {goal}: {'PASS' if value < goal else 'FAIL'}]"
        print(f"FIGURE {label}: {value:.3f}{verdict}")
    print(
        f"FIGURE 2-token request alone: {alone:.3f} s; behind a {LONG_TOKENS}-token request: {behind:.3f} s"
    )
    report_ratio(f"2-token latency behind a {LONG_TOKENS}-token request / alone", behind / alone, target=2.0)
    verdict = "PASS" if after_cancel <= 1 else "FAIL"
    print(
        f"FIGURE tokens generated after the client left: {after} ({per_token * 1e3:.1f} ms per token; nothing ran "
        f"{stopped * 1e3:.0f} ms after the close, polling included); after the server cancelled it: "
        f"{after_cancel} [goal: none beyond the current step (<= 1): {verdict}]"
    )


if __name__ == "__main__":
    main()
