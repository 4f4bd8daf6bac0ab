"""``aki serve`` live on 127.0.0.1: the official ``openai`` client, server-sent events, 4xx for bad input,
local image files, and a concurrent load from a second process whose answers all equal the lone answers.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import httpx
import openai
import pytest
from PIL import Image
from serve_helpers import QUESTION, noise_image, serving, user, wait_until

from aki.serve import InputError, Limits, loadtest
from aki.serve.protocol import ChatMessage, to_engine_messages
from aki.serve.server import ServerSettings, create_app

MAX_REQUEST_BYTES = 400_000


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    """The app on a free port of 127.0.0.1, in a thread; local images allowed inside ``image_dir``."""
    image_dir = tmp_path_factory.mktemp("images")
    settings = ServerSettings(model_name="aki-tiny", image_dir=image_dir, max_request_bytes=MAX_REQUEST_BYTES)
    with serving(create_app(engine, settings)) as url:
        yield SimpleNamespace(url=url, image_dir=image_dir)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def openai_chat(text: str, url: str | None = None) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    if url is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": parts}]


def test_the_openai_client_gets_the_lone_answer(client, engine, reference):
    image = noise_image(0)
    response = client.chat.completions.create(
        model="aki-tiny", messages=openai_chat(QUESTION, data_url(png(image))), max_tokens=12
    )
    chat = [user(QUESTION, image)]
    assert response.choices[0].message.content == reference(chat, 12)
    assert response.choices[0].finish_reason == "length"
    assert response.model == "aki-tiny"
    prompt_tokens = len(engine.encode(chat)["input_ids"][0])
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, 12)


def test_streamed_chunks_join_to_the_same_answer(client, reference):
    image = noise_image(1)
    stream = client.chat.completions.create(
        model="aki-tiny",
        messages=openai_chat("What is this?", data_url(png(image))),
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == reference([user("What is this?", image)], 12)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_and_sampling_parameters(client, reference):
    full = reference([user("Describe the image.")], 12)
    stop = full[4:7]
    response = client.chat.completions.create(
        model="aki-tiny", messages=openai_chat("Describe the image."), max_tokens=12, stop=[stop]
    )
    assert response.choices[0].message.content == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(
        model="aki-tiny",
        messages=openai_chat("Describe the image."),
        max_tokens=5,
        temperature=0.9,
        top_p=0.5,
    )
    assert sampled.usage.completion_tokens <= 5


def test_models_and_health(server):
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "aki-tiny"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def _request(text: str = "What is this?", url: str | None = None, **fields) -> bytes:
    return json.dumps({"model": "aki-tiny", "messages": openai_chat(text, url), **fields}).encode()


def _image_part(image: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png(image))}}


def _truncated_png() -> bytes:
    data = png(noise_image(5))
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "malformed JSON": (b'{"messages": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "no messages": (b'{"model": "aki-tiny"}', 400, "messages: Field required"),
    "unknown role": (b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "messages.0.role"),
    "n > 1": (_request(n=2), 400, "n: Input should be less than or equal to 1"),
    "bad base64": (_request(url="data:image/png;base64,iVBOR%%%"), 400, "not valid base64"),
    "not an image type": (_request(url=data_url(b"hello", "text/plain")), 400, "image/* data URL"),
    "bytes that are no image": (_request(url=data_url(b"GIF89a but not really")), 400, "is not an image"),
    "truncated PNG": (_request(url=data_url(_truncated_png())), 400, "is not an image PIL can read"),
    "remote URL": (_request(url="https://example.com/cat.png"), 400, "fetches nothing"),
    "image too many bytes": (
        _request(url=data_url(png(noise_image(6, (200, 200))))),
        413,
        "above the limit of 100000 bytes",
    ),
    "image too many pixels": (
        _request(url=data_url(png(Image.new("RGB", (1000, 600))))),
        413,
        "1000 x 600 = 600000 pixels, above the limit of 262144",
    ),
    "body too large": (_request("x" * MAX_REQUEST_BYTES), 413, f"limit of {MAX_REQUEST_BYTES} bytes"),
    "prompt too long": (
        _request(" ".join(["What is this?"] * 60)),
        400,
        "tokens (images expanded), above the limit of 400",
    ),
    "max_tokens too large": (_request(max_tokens=5000), 400, "above this server's limit of 1024"),
    "temperature out of range": (_request(temperature=3), 400, "temperature: Input should be less than"),
    "too many stop strings": (_request(stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
    "images too many pixels together": (
        json.dumps(
            {"messages": [{"role": "user", "content": [*[_image_part(Image.new("RGB", (400, 400)))] * 2]}]}
        ).encode(),
        413,
        "320000 pixels together, above the limit of 300000",
    ),
    "too much text, before templating": (
        _request("x" * 7000),
        400,
        "7000 characters of text, above the limit of 6400",
    ),
    "too many parts": (
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 1100}]}
        ).encode(),
        400,
        "1101 messages and parts, above the limit of 1024",
    ),
    "JSON nested too deeply": (b"[" * 100_000, 400, "nested too deeply"),
    "unknown model": (_request(model="gpt-4o"), 404, "the model 'gpt-4o' does not exist"),
    "max_tokens true": (_request(max_tokens=True), 400, "max_tokens: Input should be a valid integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, case):
    body, status, message = BAD_REQUESTS[case]
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    good = httpx.post(f"{server.url}/v1/chat/completions", content=_request(max_tokens=2), timeout=30)
    assert good.status_code == 200


def test_local_image_files_only_inside_the_image_dir(server, client, reference, tmp_path):
    image = noise_image(7)
    inside = server.image_dir / "shapes.png"
    inside.write_bytes(png(image))
    for url in (f"file://{inside}", "shapes.png"):  # a relative path is read from the image dir
        response = client.chat.completions.create(
            model="aki-tiny", messages=openai_chat("What is this?", url), max_tokens=8
        )
        assert response.choices[0].message.content == reference([user("What is this?", image)], 8)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(image))
    for url, status, message in [
        (str(server.image_dir / ".." / outside.name), 403, "outside the allowed image directory"),
        (f"file://{server.image_dir / 'missing.png'}", 400, "does not exist"),
    ]:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="aki-tiny", messages=openai_chat("x", url), max_tokens=2)
        assert caught.value.status_code == status and message in caught.value.message


def test_local_image_files_are_refused_when_not_enabled():
    message = ChatMessage.model_validate(
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}
    )
    with pytest.raises(InputError, match="local image files are disabled") as caught:
        to_engine_messages([message], Limits(), image_dir=None)
    assert caught.value.status == 403


def test_a_client_leaving_a_stream_early_leaves_the_server_serving(server, reference):
    body = json.loads(_request(max_tokens=40, stream=True))
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    again = httpx.post(f"{server.url}/v1/chat/completions", content=_request(max_tokens=6), timeout=30)
    assert again.json()["choices"][0]["message"]["content"] == reference([user("What is this?")], 6)


def test_concurrent_load_from_a_second_process_gets_the_lone_answers(server, engine):
    before = engine.stats.prefills.copy(), engine.stats.steps.copy()
    command = [sys.executable, loadtest.__file__, server.url, "--clients", "8", "--requests", "24"]
    process = subprocess.run(
        [*command, "--distinct", "6", "--max-tokens", "8", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stdout + process.stderr[-2000:]
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    assert summary["mismatches"] == [] and summary["errors"] == []
    admitted = engine.stats.prefills - before[0]  # 6 lone reference requests, then 24 under load
    assert sum(size * count for size, count in admitted.items()) == 6 + 24
    assert max(engine.stats.steps - before[1]) >= 4  # concurrent requests really decoded together


def test_the_serve_command_passes_its_options_to_the_engine_and_the_server(model_dir, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from aki.serve import server as server_module
    from aki.serve.cli import register_commands

    started = {}

    def run_server(engine, settings, *, host, port):  # stands in for uvicorn: record, close, return
        started.update(engine=engine, settings=settings, host=host, port=port)
        engine.close()

    monkeypatch.setattr(server_module, "run_server", run_server)
    app = typer.Typer()
    register_commands(app)
    options = ["--port", "8123", "--model-name", "tiny", "--max-tokens-limit", "5", "--max-batch-size", "3"]
    options += ["--batch-window-ms", "7", "--max-images", "2", "--max-image-bytes", "999", "--no-mma"]
    options += ["--api-key", "k", "--max-concurrent-requests", "3", "--max-request-pixels", "500"]
    result = CliRunner().invoke(app, ["serve", str(model_dir), *options, "--image-dir", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    engine, settings = started["engine"], started["settings"]
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    assert (settings.model_name, settings.image_dir) == ("tiny", model_dir)
    assert (settings.api_key, settings.max_concurrent_requests, engine.limits.max_request_pixels) == (
        "k",
        3,
        500,
    )
    assert (engine.limits.max_new_tokens, engine.limits.max_images, engine.limits.max_image_bytes) == (
        5,
        2,
        999,
    )
    assert (engine.max_batch_size, engine.batch_window_s, engine.default_mma) == (3, 0.007, False)


def test_too_many_images_are_refused_before_any_is_decoded(server, monkeypatch):
    from aki.serve import protocol

    opened = []
    monkeypatch.setattr(protocol, "image_pixels", lambda *args, **kwargs: opened.append(1))
    monkeypatch.setattr(protocol, "decode_image", lambda *args, **kwargs: opened.append(1))
    parts = [_image_part(Image.new("L", (64, 64)))] * 30
    body = {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the chat has 30 images, above the limit of 8"
    assert opened == []


def test_the_api_key_guards_v1_and_health_stays_open(engine):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(engine, ServerSettings(model_name="aki-tiny", api_key="s3cret")))
    body = json.loads(_request(max_tokens=2))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = client.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        assert client.get("/v1/models", headers=headers).status_code == 401
    assert client.get("/health").status_code == 200
    good = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200


def test_a_full_server_answers_429_and_a_client_that_leaves_stops_its_generation(engine, reference):
    """One slot: a long non-streaming request holds it (a second gets 429 at once); when its client closes
    the connection, the generation stops within a few steps and the slot is free again.
    """
    settings = ServerSettings(model_name="aki-tiny", max_concurrent_requests=1)
    image = noise_image(0)
    long = {"messages": openai_chat(QUESTION, data_url(png(image))), "max_tokens": 400}
    with serving(create_app(engine, settings)) as url:
        before = engine.stats.generated_tokens
        connection = loadtest.send_and_leave_open(url, long)
        wait_until(lambda: engine.load["running"] == 1, what="the long request to run")
        busy = httpx.post(f"{url}/v1/chat/completions", content=_request(max_tokens=2), timeout=30)
        assert busy.status_code == 429 and "1 requests in flight" in busy.json()["error"]["message"]
        connection.close()
        left = engine.stats.generated_tokens
        wait_until(lambda: engine.load["running"] == 0, what="the abandoned request to stop")
        assert engine.stats.generated_tokens - left < 50  # a few steps at most, not the 400 asked for
        assert engine.stats.generated_tokens - before < 400
        wait_until(lambda: httpx.get(f"{url}/health").json()["in_flight"] == 0, what="the slot to be free")
        again = httpx.post(f"{url}/v1/chat/completions", content=_request(max_tokens=6), timeout=30)
        assert again.json()["choices"][0]["message"]["content"] == reference([user("What is this?")], 6)


def test_serving_on_every_interface_without_an_api_key_warns(model_dir, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from aki.serve import server as server_module
    from aki.serve.cli import register_commands

    monkeypatch.setattr(server_module, "run_server", lambda engine, settings, **where: engine.close())
    app = typer.Typer()
    register_commands(app)
    result = CliRunner().invoke(app, ["serve", str(model_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "--host 0.0.0.0 exposes the server to the network without an API key" in result.output
