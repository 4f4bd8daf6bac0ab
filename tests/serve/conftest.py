"""Shared pieces of the serving tests: a tiny saved AKI directory, an engine on it, and reference answers.

The reference answer of a chat is what ``model.generate`` gives for that chat alone (greedy, batch of one), on
a second copy of the model loaded from the same directory: the engine's batched answers must equal it.
"""

from __future__ import annotations

import pytest
import torch
from serve_helpers import TEXTS

from aki.generation import load_model
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer
from aki.serve import Engine, Limits


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """aki_tiny config + tiny tokenizer + processor, saved with save_pretrained (what `aki train` writes).

    The language model is initialised with a larger scale (0.3) and seed 55: then its random greedy answers do
    not end early and MMA changes them, so tests can tell MMA from causal by the answer text alone.
    """
    tokenizer = tiny_tokenizer(TEXTS)
    config = aki_tiny(tokenizer, text_init_std=0.3)
    torch.manual_seed(55)
    model = AkiForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("aki-tiny")
    model.save_pretrained(path)
    AkiProcessor.for_model(config, tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def engine(model_dir):
    """A shared engine; its window is wide enough that requests submitted in a loop meet in one batch."""
    limits = Limits(
        max_prompt_tokens=400, max_image_bytes=100_000, max_image_pixels=512 * 512, max_request_pixels=300_000
    )
    with Engine.from_pretrained(model_dir, batch_window_s=0.15, limits=limits) as engine:
        yield engine


@pytest.fixture(scope="session")
def reference(model_dir):
    """``reference(messages, max_new_tokens, mma=True) -> str``: the chat answered alone by ``model.generate``."""
    model, processor = load_model(model_dir)
    eos = model.generation_config.eos_token_id

    def answer(messages: list[dict], max_new_tokens: int, *, mma: bool = True) -> str:
        model.set_mma(mma)
        prompt, images = _render(messages)
        batch = processor(text=prompt, images=images or None, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[0, batch["input_ids"].shape[1] :].tolist()
        new = new[: new.index(eos)] if eos in new else new
        return processor.tokenizer.decode(new, skip_special_tokens=True)

    def _render(messages):
        images, plain = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                images += [item["image"] for item in content if item["type"] == "image"]
                content = [{"type": item["type"], "text": item.get("text", "")} for item in content]
            plain.append({"role": message["role"], "content": content})
        return processor.apply_chat_template(plain, add_generation_prompt=True), images

    return answer
