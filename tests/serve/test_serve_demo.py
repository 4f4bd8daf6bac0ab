"""``aki demo`` in headless Chromium (Debian's, driven by Playwright): upload, ask twice, read both answers.

The page must show, for each question, the MMA answer and the causal answer that the model gives for that
chat alone, plus the attention pictures; a screenshot of the page is taken at the end.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import QUESTION, free_port, noise_image, user

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install -y chromium); CI installs it",
)
FOLLOW_UP = "And where is it?"


@pytest.fixture(scope="module")
def demo(engine):
    from aki.serve import SamplingParams
    from aki.serve.demo import launch_demo

    port = free_port()
    demo = launch_demo(engine, port=port, params=SamplingParams(max_new_tokens=10), block=False)
    demo.url = f"http://127.0.0.1:{port}/"
    yield demo
    uploads = {Path(path) for path in demo.upload_file_set}
    demo.close()
    assert uploads and not any(path.exists() for path in uploads)  # the uploads went with the demo


@pytest.fixture(scope="module")
def demo_url(demo):
    return demo.url


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def answers(page, side: str) -> list[str]:
    """The assistant messages shown in one chat column, whitespace collapsed."""
    return [
        " ".join(text.split()) for text in page.locator(f"#chat-{side} [data-testid=bot]").all_inner_texts()
    ]


def wait_for_answers(page, expected: dict[str, list[str]], *, timeout: float = 40.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = {side: answers(page, side) for side in expected}
        if shown == expected:
            return shown
        page.wait_for_timeout(100)
    return shown


def test_upload_ask_twice_and_see_both_answers_and_the_attention(demo_url, page, reference, tmp_path):
    image = noise_image(0)
    image.save(tmp_path / "shapes.png")
    first = {"mma": reference([user(QUESTION, image)], 10, mma=True)}
    first["causal"] = reference([user(QUESTION, image)], 10, mma=False)
    assert first["mma"] != first["causal"]
    second = {
        side: reference(
            [user(QUESTION, image), {"role": "assistant", "content": first[side]}, user(FOLLOW_UP)],
            10,
            mma=side == "mma",
        )
        for side in first
    }

    page.goto(demo_url, timeout=30_000)
    page.locator("#image input[type=file]").set_input_files(str(tmp_path / "shapes.png"))
    page.locator("#question textarea").fill(QUESTION)
    page.locator("#ask").click()
    expected = {side: [" ".join(first[side].split())] for side in first}
    assert wait_for_answers(page, expected) == expected
    page.locator("#attention-view img").wait_for(timeout=30_000)
    page.locator("#mask-view img").wait_for(timeout=30_000)

    page.locator("#question textarea").fill(FOLLOW_UP)
    page.locator("#ask").click()
    expected = {side: [*expected[side], " ".join(second[side].split())] for side in first}
    assert wait_for_answers(page, expected) == expected

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_an_upload_beyond_the_image_limits_is_refused_before_decoding(demo, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 144 M pixels in 17.5 KB
    client = Client(demo.url, verbose=False)
    with pytest.raises(AppError, match=r"huge.png' is too large to decode: Image size \(144000000 pixels\)"):
        client.predict("What is this?", handle_file(str(tmp_path / "huge.png")), api_name="/answer")
    assert "huge.png" in {Path(path).name for path in demo.upload_file_set}  # deleted when the demo stops
