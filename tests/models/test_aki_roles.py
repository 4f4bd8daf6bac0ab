"""One roles rule: the processor and the model's fallback (``mma_roles`` omitted) give the same roles.

Both call :func:`aki.mma.roles_from_token_ids`, the processor with the ids of its tokenizer and the model with
the header ids its config recorded; these tests hold that the two agree token for token on every kind of
sequence, and that a forward without roles therefore equals one with the processor's roles.
"""

from __future__ import annotations

import pytest
import torch
from aki_model_helpers import assistant, images_of, noise, user

from aki.mma import Role

CHATS = {
    "single turn, to answer": ([user(noise(0), "What is this?")], True),
    "single turn with its answer": ([user(noise(0), "What is this?"), assistant("It is a cat.")], False),
    "multi-turn, two images": (
        [
            user(noise(1), "What is this?"),
            assistant("It is a cat."),
            user(noise(2), "What color?"),
            assistant("It is red."),
            user("Describe the image."),
        ],
        True,
    ),
}


def _inputs(processor, name):
    if name == "caption":  # a pre-training sample: no assistant header, causal throughout
        return processor(images=[noise(3)], text="<s><image>A blue cat sits on a mat.<|endofchunk|>")
    chat, to_answer = CHATS[name]
    text = processor.apply_chat_template(chat, add_generation_prompt=to_answer)
    return processor(images=images_of(chat), text=text)


@pytest.mark.parametrize("name", ["caption", *CHATS])
def test_the_processor_and_the_model_fallback_derive_the_same_roles(model, processor, name):
    inputs = _inputs(processor, name)
    derived = model.roles_from_input_ids(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert torch.equal(derived, inputs["mma_roles"])
    with torch.no_grad():
        without = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits
        explicit = model(**inputs).logits
    assert torch.equal(without, explicit)


def test_a_caption_is_response_throughout_so_no_caption_leaks_into_the_image(model, processor):
    roles = _inputs(processor, "caption")["mma_roles"][0]
    assert set(roles.tolist()) == {Role.MEDIA, Role.RESPONSE}


def test_a_left_padded_batch_gets_the_roles_of_each_sample_alone(model, processor):
    texts, images = [], []
    for name in CHATS:
        chat, to_answer = CHATS[name]
        texts.append(processor.apply_chat_template(chat, add_generation_prompt=to_answer))
        images.append(images_of(chat))
    batch = processor(images=images, text=texts)
    derived = model.roles_from_input_ids(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(derived, batch["mma_roles"])
    for row, name in enumerate(CHATS):
        alone = _inputs(processor, name)["mma_roles"][0]
        valid = batch["attention_mask"][row].bool()
        assert torch.equal(batch["mma_roles"][row][valid], alone)
