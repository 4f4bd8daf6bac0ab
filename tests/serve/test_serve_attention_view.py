"""The demo's attention view: image tokens x question words, MMA vs causal, and its pictures."""

from __future__ import annotations

import torch
from PIL import Image
from serve_helpers import QUESTION, noise_image, user

from aki.serve import SamplingParams
from aki.serve.attention_view import question_attention, save_attention_png, save_prompt_mask_png

WORDS = ["What", "colour", "is", "the", "shape", "in", "the", "image?", "<|end|>", "<|assistant|>"]


def test_with_mma_the_image_sees_every_question_word_and_with_causal_none(engine):
    view = question_attention(engine, [user(QUESTION, noise_image(0))])
    assert view.words == WORDS
    start, stop = view.image_span
    assert stop - start == engine.model.config.num_latents == 4
    assert view.question_span[0] == stop
    assert view.labels[start:stop] == ["img"] * 4
    assert view.weights["MMA"].shape == view.weights["causal"].shape == (4, len(WORDS))
    assert torch.equal(view.weights["causal"], torch.zeros(4, len(WORDS)))  # causal: the question comes later
    assert bool((view.weights["MMA"] > 0).all())
    assert bool((view.weights["MMA"].sum(-1) < 1).all())  # a share of each row's attention


def test_a_later_turn_is_out_of_the_images_sight(engine):
    chat = [
        user("What is this?", noise_image(0)),
        {"role": "assistant", "content": "a shape"},
        user(QUESTION),
    ]
    view = question_attention(engine, chat)
    # The image sees its own turn up to <|assistant|>, never the answer nor the next question.
    assert view.words == ["What", "is", "this?", "<|end|>", "<|assistant|>"]
    assert question_attention(engine, [user(QUESTION)]) is None  # no image, no view


def test_the_view_leaves_the_engine_as_it_was(engine, reference):
    chat = [user(QUESTION, noise_image(0))]
    question_attention(engine, chat)
    assert engine.model.config._attn_implementation == "sdpa"
    assert engine.generate(chat, SamplingParams(max_new_tokens=8)).text == reference(chat, 8)


def test_pictures_of_the_view_and_of_the_mask(engine, tmp_path):
    view = question_attention(engine, [user(QUESTION, noise_image(0))])
    with Image.open(save_attention_png(view, tmp_path / "attention.png")) as picture:
        assert picture.format == "PNG" and picture.width > 2 * picture.height  # two heatmaps side by side
    with Image.open(save_prompt_mask_png(view, tmp_path / "mask.png")) as picture:
        assert picture.format == "PNG"
