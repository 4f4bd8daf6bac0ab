"""``aki demo``: a gradio app on the batching :class:`Engine`: upload an image, chat over several turns, and see
every question answered twice, side by side and streamed: with Modality-Mutual Attention and with causal
attention. Under the answers: the MMA mask around the image and the question, and how much each image token
attends to each question word in both modes (:mod:`aki.serve.attention_view`).

Nothing leaves the machine: analytics are off, there is no share link, the theme uses system fonts and the
page is rendered in the browser (no SSR node server). Uploads are opened within the engine's
:class:`~aki.serve.engine.Limits` (bytes, then width x height from the header, before any pixel is decoded);
gradio deletes them an hour after upload and all of them when the demo stops.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..generation import InputError, Message, SamplingParams
from .attention_view import question_attention, save_attention_png, save_prompt_mask_png
from .engine import Engine
from .images import open_image_file

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # after the analytics switch

SIDES = {"mma": True, "causal": False}  # chat column -> MMA on
INTRO = (
    "## AKI: Modality-Mutual Attention\n"
    "Upload an image and ask about it. Each question is answered twice: with **MMA** (the image tokens also "
    "see the question) and with plain **causal** attention. Below: the MMA mask and how much each image "
    "token attends to each question word."
)


def new_state() -> dict[str, Any]:
    """A conversation: the messages of each side, and whether the uploaded image still has to be sent."""
    return {"mma": [], "causal": [], "image_pending": True}


def build_demo(engine: Engine, *, params: SamplingParams | None = None) -> gr.Blocks:
    """The gradio app (not launched). Element ids for scripts and tests: ``image``, ``question``, ``ask``,
    ``clear``, ``chat-mma``, ``chat-causal``, ``mask-view``, ``attention-view``.
    """
    params = params or SamplingParams(max_new_tokens=64)

    def answer(question: str, image: str | None, state: dict[str, Any]) -> Iterator[tuple]:
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        content: list[dict[str, Any]] = []
        try:
            if image is not None and state["image_pending"]:
                content.append({"type": "image", "image": open_image_file(image, engine.limits)})
            user = {"role": "user", "content": [*content, {"type": "text", "text": question}]}
            chats = {side: [*state[side], user] for side in SIDES}
            generations = {side: engine.submit(chats[side], params, mma=mma) for side, mma in SIDES.items()}
        except InputError as error:
            raise gr.Error(str(error)) from error
        state["image_pending"] = False
        shown = {side: [*_display(state[side]), *_display([user]), _assistant("")] for side in SIDES}
        try:
            for side, generation in generations.items():  # both decode together; MMA is shown first
                for piece in generation:
                    shown[side][-1]["content"] += piece
                    yield shown["mma"], shown["causal"], gr.skip(), gr.skip(), state, ""
        finally:
            for generation in generations.values():  # the page went away: stop generating for it
                generation.cancel()
        for side, generation in generations.items():
            state[side] = [*chats[side], _assistant(generation.completion.text)]
        yield shown["mma"], shown["causal"], *_pictures(engine, chats["mma"]), state, ""

    def image_changed(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "image_pending": True}

    def clear() -> tuple:
        return [], [], None, None, new_state(), ""

    # delete_cache: uploads older than an hour go every hour, and all of them when the server stops.
    with gr.Blocks(title="AKI demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(new_state())
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath",  # opened by us, within the limits: gradio decodes nothing
                    image_mode=None,
                    label="Image",
                    sources=["upload"],
                    elem_id="image",
                    height=260,
                )
                question = gr.Textbox(
                    label="Question", placeholder="What is in the image?", elem_id="question"
                )
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    reset = gr.Button("New conversation", elem_id="clear")
            chat_mma = gr.Chatbot(label="Modality-Mutual Attention", elem_id="chat-mma", scale=1, height=380)
            chat_causal = gr.Chatbot(label="causal attention", elem_id="chat-causal", scale=1, height=380)
        with gr.Row():
            attention_view = gr.Image(
                label="image tokens → question words",
                type="pil",
                interactive=False,
                elem_id="attention-view",
                scale=3,
            )
            mask_view = gr.Image(
                label="MMA mask", type="pil", interactive=False, elem_id="mask-view", scale=2
            )
        outputs = [chat_mma, chat_causal, mask_view, attention_view, state, question]
        ask.click(answer, [question, image, state], outputs)
        question.submit(answer, [question, image, state], outputs)
        image.change(image_changed, state, state)
        reset.click(clear, None, outputs)
    return demo


def _pictures(engine: Engine, messages: list[Message]) -> tuple[Image.Image | None, Image.Image | None]:
    """(mask picture, attention picture) of the prompt that answered ``messages``; None without an image."""
    view = question_attention(engine, messages)
    if view is None:
        return None, None
    with tempfile.TemporaryDirectory(prefix="aki-demo-") as folder:
        mask = _load(save_prompt_mask_png(view, Path(folder) / "mask.png"))
        attention = _load(save_attention_png(view, Path(folder) / "attention.png"))
    return mask, attention


def _load(path: Path) -> Image.Image:
    with Image.open(path) as picture:
        return picture.convert("RGB")


def _display(messages: list[Message]) -> list[dict[str, str]]:
    """Chatbot messages: text only, an image shown as a marker in front of its question."""
    shown = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            marks = "[image] " * sum(item["type"] == "image" for item in content)
            content = marks + "\n".join(item["text"] for item in content if item["type"] == "text")
        shown.append({"role": message["role"], "content": content})
    return shown


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def theme() -> gr.themes.Base:
    """gradio's default look with system fonts (the default theme fetches Google fonts)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def launch_demo(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    params: SamplingParams | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Build and launch the demo on ``host:port`` (no share link); ``block=False`` returns at once (call
    ``demo.close()`` to stop it). Up to 8 questions run at once, so their answers share batches. gradio
    refuses an upload above the engine's ``max_image_bytes``.
    """
    demo = build_demo(engine, params=params).queue(default_concurrency_limit=8)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        ssr_mode=False,
        quiet=True,
        show_error=True,
        theme=theme(),
        max_file_size=engine.limits.max_image_bytes,
    )
    return demo


__all__ = ["build_demo", "launch_demo", "new_state", "theme"]
