"""``aki chat``: multi-turn sessions with images by path, streamed answers, ``--no-mma``, and the commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from serve_helpers import QUESTION, noise_image, user
from typer.testing import CliRunner

from aki.serve import SamplingParams
from aki.serve.chat import ChatSession
from aki.serve.cli import DEFAULT_MODEL_DIR, register_commands

runner = CliRunner()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "shapes.png"
    noise_image(0).save(path)
    return path


@pytest.fixture(scope="module")
def cli_app():
    app = typer.Typer()
    register_commands(app)
    return app


def test_a_session_keeps_the_history_and_sends_each_image_once(engine, reference, image_path):
    session = ChatSession(engine, params=SamplingParams(max_new_tokens=10))
    session.attach_image(image_path)
    first = list(session.ask(QUESTION))
    image = noise_image(0)  # what the PNG file holds, pixel for pixel
    assert "".join(first) == reference([user(QUESTION, image)], 10)
    assert len(first) > 1  # streamed

    second = "".join(session.ask("And where is it?"))
    history = [user(QUESTION, image), {"role": "assistant", "content": "".join(first)}]
    assert second == reference([*history, user("And where is it?")], 10)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.pending_images == []

    session.reset()
    assert "".join(session.ask("Describe the image.")) == reference([user("Describe the image.")], 10)


def test_the_chat_command_streams_answers_with_and_without_mma(cli_app, model_dir, reference, image_path):
    chat = [user(QUESTION, noise_image(0))]
    with_mma, causal = reference(chat, 12, mma=True), reference(chat, 12, mma=False)
    assert with_mma != causal
    lines = f"/image {image_path}\n{QUESTION}\n/quit\n"
    for flags, expected in [([], with_mma), (["--no-mma"], causal)]:
        result = runner.invoke(cli_app, ["chat", str(model_dir), "--max-tokens", "12", *flags], input=lines)
        assert result.exit_code == 0, result.output
        assert f"aki> {expected}\n" in result.output
        assert "attached" in result.output and "bye" in result.output


def test_chat_commands_and_errors_do_not_end_the_session(cli_app, model_dir, reference, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    lines = (
        f"/image {tmp_path / 'missing.png'}\n/image {not_an_image}\n/image\n/bogus\n/reset\nWhat is this?\n"
    )
    result = runner.invoke(cli_app, ["chat", str(model_dir), "--max-tokens", "6"], input=lines)
    assert result.exit_code == 0, result.output
    assert "does not exist" in result.output
    assert "is not an image" in result.output
    assert "usage: /image PATH" in result.output
    assert "unknown command '/bogus'" in result.output
    assert "new conversation" in result.output
    assert f"aki> {reference([user('What is this?')], 6)}\n" in result.output  # end of input then leaves


def test_a_missing_model_directory_is_named(cli_app, tmp_path):
    for command in ("chat", "serve", "demo"):
        result = runner.invoke(cli_app, [command, str(tmp_path / "nothing")])
        assert result.exit_code == 2
        assert "not a saved model directory" in result.output


def test_the_default_model_is_what_the_embedded_default_training_writes():
    from aki.quickstart import StudyOptions

    assert Path(StudyOptions().output_dir) / "mma" == DEFAULT_MODEL_DIR
