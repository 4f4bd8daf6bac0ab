"""``aki serve DIR --engine vllm``: vLLM's OpenAI server with images, streaming and concurrent requests.

The server runs as a real deployment would (its engine in a process of its own) on 127.0.0.1, for a bounded
load: a few distinct requests sent alone, then 8 clients sending 24 requests (some streamed); every answer
must equal the answer to the same request sent alone, and the first one aki's own ``generate``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from vllm_helpers import VLLM_MISSING, noise

from aki.serve.loadtest import data_url

pytest.importorskip("vllm.entrypoints.llm", reason=VLLM_MISSING)

import httpx
import torch
from openai import OpenAI
from transformers import AutoProcessor

from aki.models import AkiForConditionalGeneration

pytestmark = pytest.mark.vllm

START_TIMEOUT_S = 300
QUESTIONS = ["What is this?", "What color is it? Describe the image.", "Which shape is on the left?"]


def messages(index: int) -> list[dict]:
    """Distinct requests: question ``index % 3`` about image ``index`` (every third without an image)."""
    content = [{"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]}]
    if index % 3 != 2:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(noise(100 + index))}})
    return [{"role": "user", "content": content}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(aki_dir, engines, tmp_path_factory) -> Iterator[str]:
    engines.close()  # one engine at a time on this machine
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    command = [
        sys.executable,
        "-m",
        "aki.cli",
        "serve",
        str(aki_dir),
        "--engine",
        "vllm",
        "--port",
        str(port),
    ]
    command += ["--model-name", "aki", "--max-images", "2", "--vllm-arg=--dtype=float32"]
    command += ["--vllm-arg=--max-model-len=512", "--vllm-arg=--seed=0"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server stopped ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the server did not start in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=120, max_retries=0)


def ask(client: OpenAI, index: int, *, stream: bool = False) -> str:
    request = {"model": "aki", "messages": messages(index), "max_tokens": 8, "temperature": 0}
    if not stream:
        return client.chat.completions.create(**request).choices[0].message.content
    chunks = client.chat.completions.create(**request, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


@pytest.fixture(scope="module")
def alone(client) -> list[str]:
    return [ask(client, index) for index in range(6)]


def test_the_server_lists_the_model(server):
    assert [model["id"] for model in httpx.get(f"{server}/v1/models").json()["data"]] == ["aki"]


def test_an_answer_about_an_image_is_akis_own_greedy_answer(alone, aki_dir):
    processor = AutoProcessor.from_pretrained(aki_dir)
    model = AkiForConditionalGeneration.from_pretrained(aki_dir).eval()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    batch = processor(
        images=[noise(100)], text=processor.apply_chat_template(chat, add_generation_prompt=True)
    )
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1] :]
    assert alone[0] == processor.tokenizer.decode(tokens, skip_special_tokens=True)


def test_a_streamed_answer_is_the_whole_answer(client, alone):
    assert ask(client, 1, stream=True) == alone[1]


def test_concurrent_clients_get_the_answers_requests_get_alone(client, alone):
    answers: dict[int, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    work = iter(range(24))

    def client_loop() -> None:
        while True:
            with lock:
                index = next(work, None)
            if index is None:
                return
            try:
                text = ask(client, index % 6, stream=index % 4 == 0)
            except Exception as error:  # any failure is reported with its request
                with lock:
                    errors.append(f"request {index}: {type(error).__name__}: {error}")
                continue
            with lock:
                answers[index] = text

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert len(answers) == 24
    assert {index: answers[index] for index in answers} == {index: alone[index % 6] for index in range(24)}
