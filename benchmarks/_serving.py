"""``aki serve`` in a process of its own, for the serving benchmarks (bench_serve, bench_reliability, bench_vllm)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def save_tiny_model(path: Path, *, ends_answers: bool = True) -> None:
    """A freshly initialised ``aki_tiny`` directory (seed 0) over the load test's questions.

    ``ends_answers=False`` switches its end-of-sequence token off, so every answer runs to its ``max_tokens``.
    """
    import torch

    from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer
    from aki.serve.loadtest import QUESTIONS

    tokenizer = tiny_tokenizer(QUESTIONS)
    config = aki_tiny(tokenizer)
    torch.manual_seed(0)
    model = AkiForConditionalGeneration(config)
    if not ends_answers:
        model.generation_config.eos_token_id = None
    model.save_pretrained(path)
    AkiProcessor.for_model(config, tokenizer).save_pretrained(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    model_dir: Path,
    options: Sequence[str] = (),
    *,
    ready_path: str = "/health",
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """``aki serve model_dir`` on a free port of 127.0.0.1 with ``options``; returns once ``ready_path`` answers.

    The server's log goes to a temporary file (a pipe nobody reads would stall a chatty server); its tail is
    in the error when the server exits or does not answer within ``timeout`` seconds.
    """
    port = free_port()
    command = [sys.executable, "-m", "aki.serve.cli", "serve", str(model_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), *options]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (open while the server runs; closed with this process)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env or dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {_tail(log)}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not answer {ready_path} within {timeout:.0f} s: {_tail(log)}")


def _tail(log, size: int = 2000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]
