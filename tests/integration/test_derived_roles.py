"""Roles a VLM derives when ``mma_roles`` is omitted: MEDIA at its image tokens, RESPONSE where labelled."""

from __future__ import annotations

import pytest
import torch

from aki.mma import Role

from .tiny import IMAGE_TOKEN, VLM_FAMILIES, batch, build, logits

IGNORE = -100
LAYOUTS = ["T M M M M T T T R R R", "T T M M M M T T R R R R R"]


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_image_tokens_are_media_and_the_rest_text_when_roles_are_omitted(name):
    """A forward without roles equals one with MEDIA at ``image_token_id`` and TEXT elsewhere."""
    inputs, _ = batch(name, LAYOUTS)
    roles = torch.where(inputs["input_ids"] == IMAGE_TOKEN, int(Role.MEDIA), int(Role.TEXT))
    model = build(name, mma=True)
    assert torch.equal(logits(model, inputs), logits(model, inputs, roles))


def test_labelled_positions_are_response_when_roles_are_omitted():
    """Llava trained with ``labels``: loss and logits equal those with explicit roles, labels -> RESPONSE.

    With the labelled answer read as TEXT instead, media would see the answer: the loss would differ.
    """
    inputs, roles = batch("llava", LAYOUTS)
    labelled = roles == Role.RESPONSE
    labels = torch.where(labelled, inputs["input_ids"], IGNORE)
    model = build("llava", mma=True)
    with torch.no_grad():
        derived = model(**inputs, labels=labels)
        explicit = model(**inputs, labels=labels, mma_roles=roles)
        answer_as_text = model(
            **inputs, labels=labels, mma_roles=torch.where(labelled, int(Role.TEXT), roles)
        )
    assert torch.equal(derived.logits, explicit.logits)
    torch.testing.assert_close(derived.loss, explicit.loss, atol=1e-6, rtol=0)
    assert (derived.loss - answer_as_text.loss).abs() > 1e-5


def test_a_label_on_an_image_token_is_refused():
    """Media positions cannot be RESPONSE: a label there raises and names the problem."""
    inputs, _ = batch("llava", LAYOUTS)
    labels = inputs["input_ids"].clone()  # every position labelled, image tokens included
    with pytest.raises(ValueError, match="media token position carries a label"):
        build("llava", mma=True)(**inputs, labels=labels)


def test_generation_without_roles_derives_them_once_so_uncached_equals_cached():
    """generate() fixes the derived roles to the prompt: generated tokens stay RESPONSE without a cache too.

    Derived per forward instead, the uncached steps would read the generated tokens as TEXT that the
    image tokens may see, and the scores would drift from the cached run.
    """
    inputs, _ = batch("llava", ["T M M M M T T T", "T T M M M M T T"])
    model = build("llava", mma=True)
    kwargs = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    inputs.pop("position_ids")
    cached = model.generate(**inputs, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(step_cached, step_uncached, atol=1e-5, rtol=0)
