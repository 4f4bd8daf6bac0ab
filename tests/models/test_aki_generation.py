"""generate() with MMA: batched == per sample, cached == uncached, beams, sampling, streaming, image encoding."""

from __future__ import annotations

import threading

import pytest
import torch
from aki_model_helpers import assistant, images_of, noise, user
from transformers import TextIteratorStreamer

from aki.mma import roles_from_labels

CHATS = [
    [user(noise(11), "What is this?")],
    [user(noise(12), noise(13), "What color?")],
    [user(noise(14), "What is this?"), assistant("It is a cat."), user(noise(15), "What color?")],
    [user("Describe the image.")],
]
NEW_TOKENS = 6


def batch_of(processor, chats):
    texts = [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in chats]
    images = [images_of(chat) for chat in chats]
    return processor(images=images if any(images) else None, text=texts)


def generated(model, batch, **options):
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, **options}
    return model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]


def until_eos(tokens, eos):
    tokens = tokens.tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture
def eos(model):
    return model.generation_config.eos_token_id


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}], ids=["greedy", "beam-search"])
def test_batched_left_padded_equals_per_sample(model, processor, eos, options):
    together = generated(model, batch_of(processor, CHATS), **options)
    for row, chat in enumerate(CHATS):
        alone = generated(model, batch_of(processor, [chat]), **options)[0]
        assert until_eos(together[row], eos) == until_eos(alone, eos), f"prompt {row}"


def test_cached_equals_uncached(model, processor):
    batch = batch_of(processor, CHATS)
    assert torch.equal(generated(model, batch), generated(model, batch, use_cache=False))


def test_prefill_logits_are_the_mma_forward_logits(model, processor):
    batch = batch_of(processor, CHATS[:1])
    first_step = model.generate(
        **batch, max_new_tokens=1, output_logits=True, return_dict_in_generate=True
    ).logits[0]
    with torch.no_grad():
        forward = model(**batch).logits[:, -1]
        model.set_mma(False)
        causal_first_step = model.generate(
            **batch, max_new_tokens=1, output_logits=True, return_dict_in_generate=True
        ).logits[0]
        causal_forward = model(**batch).logits[:, -1]
    assert torch.allclose(first_step, forward, atol=1e-6)
    assert torch.allclose(causal_first_step, causal_forward, atol=1e-6)
    # the switch reaches generate: in this random model MMA moves the last logits by about 4e-5
    assert (first_step - causal_first_step).abs().max() > 1e-5


def test_roles_default_to_the_prompt_when_not_given(model, processor):
    batch = batch_of(processor, CHATS[:3])
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    derived = roles_from_labels(batch["input_ids"], model.config.media_token_id)
    assert torch.equal(generated(model, inputs), generated(model, {**inputs, "mma_roles": derived}))
    assert torch.equal(generated(model, inputs), generated(model, inputs, use_cache=False))


def test_sampling_with_top_k_one_is_greedy(model, processor):
    batch = batch_of(processor, CHATS)
    torch.manual_seed(0)
    sampled = generated(model, batch, do_sample=True, top_k=1, temperature=0.7)
    assert torch.equal(sampled, generated(model, batch))


def test_streamer_yields_the_generated_text(model, processor):
    batch = batch_of(processor, CHATS[2:3])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "streamer": streamer}
    worker = threading.Thread(target=model.generate, kwargs={**batch, **options})
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    expected = processor.tokenizer.decode(generated(model, batch)[0], skip_special_tokens=True)
    assert streamed == expected


@pytest.mark.parametrize(
    "options", [{}, {"num_beams": 2}, {"use_cache": False}], ids=["greedy", "beams", "no-cache"]
)
def test_each_image_is_encoded_once_per_generate(model, processor, options):
    seen = {"calls": 0, "images": 0}

    def hook(module, args, output):
        seen["calls"] += 1
        seen["images"] += args[0].shape[0]

    handle = model.vision_tower.register_forward_hook(hook)
    generated(model, batch_of(processor, CHATS), **options)
    handle.remove()
    assert seen == {"calls": 1, "images": 5}


def test_placeholder_token_is_never_generated(model, processor):
    batch = batch_of(processor, CHATS)
    media = model.config.media_token_id
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[media] = 100.0  # make the placeholder the most likely token everywhere
    model.language_model.lm_head.register_parameter("bias", torch.nn.Parameter(bias))
    assert not (generated(model, batch) == media).any()
