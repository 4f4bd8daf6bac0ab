"""No leakage, by perturbation: what lies at or after a response never reaches an earlier position."""

from __future__ import annotations

import pytest
import torch

from aki.mma import Role, parse_layout

from .tiny import (
    FAMILIES,
    FIRST_TEXT_TOKEN,
    VOCAB,
    batch,
    build,
    image_of_position,
    images_slice,
    logits,
    perturbed,
)

LAYOUTS = {
    False: ["T M M M T T R R T M M T R R", "T M M M M T T R R R M M T T R R"],
    True: ["T M M M M T T T R R T M M M M T R R", "T T M M M M T T T T R R R T M M M M T R"],
}


def response_starts(roles: torch.Tensor) -> list[tuple[int, int]]:
    """``(row, position)`` of the first token of every response."""
    previous = torch.nn.functional.pad(roles[:, :-1], (1, 0), value=int(Role.TEXT))
    return [
        tuple(index) for index in ((roles == Role.RESPONSE) & (previous != Role.RESPONSE)).nonzero().tolist()
    ]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_tokens_at_or_after_a_response_do_not_change_earlier_logits(name, implementation):
    """For every response start r: new text (and new images) from r on leave all logits before r unchanged."""
    inputs, roles = batch(name, LAYOUTS[FAMILIES[name].is_vlm])
    model = build(name, implementation, mma=True)
    original = logits(model, inputs, roles)
    images = image_of_position(inputs["input_ids"])
    valid = inputs["attention_mask"].bool()
    starts = response_starts(roles)
    assert len(starts) == 4
    for row, start in starts:
        changed = dict(inputs)
        later = torch.zeros_like(roles, dtype=torch.bool)
        later[row, start:] = True
        changed["input_ids"] = perturbed(inputs["input_ids"], later)
        later_images = images[row, start:][images[row, start:] >= 0]
        if later_images.numel():
            pixels = images_slice(name, int(later_images.min()), int(later_images.max()) + 1)
            changed["pixel_values"] = inputs["pixel_values"].clone()
            changed["pixel_values"][pixels] += 1.0
        after = logits(model, changed, roles)
        earlier = valid[row, :start]  # rows of padded queries are free
        torch.testing.assert_close(
            after[row, :start][earlier], original[row, :start][earlier], atol=1e-6, rtol=0
        )
        assert (after[row, start:] - original[row, start:]).abs().max() > 1e-3  # the change did arrive


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_text_after_an_image_changes_the_image_rows(name):
    """Media see the prompt after them: one new word changes every media row (causally it would change none)."""
    inputs, roles = batch(name, ["T M M M M T T T R R"])
    changed = dict(inputs, input_ids=perturbed(inputs["input_ids"], torch.arange(10)[None] == 6))
    media = roles == Role.MEDIA
    mma_model, causal_model = build(name, mma=True), build(name)
    mma_change = (logits(mma_model, changed, roles) - logits(mma_model, inputs, roles))[media]
    causal_change = (logits(causal_model, changed) - logits(causal_model, inputs))[media]
    assert mma_change.abs().amax(-1).min() > 1e-4
    assert causal_change.abs().max() < 1e-6


@pytest.mark.parametrize("implementation", ["sdpa", "causal_stand_in"])
def test_packed_sequences_stay_independent(implementation):
    """Sequences packed in one row (position ids restart; no attention mask, no cache) do not see each other.

    transformers isolates such sequences; media of the first must not see the text of the second either.
    """
    first, second = parse_layout("T M M T T T"), parse_layout("T T T R R R")
    input_ids = torch.randint(FIRST_TEXT_TOKEN, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(6).repeat(2)[None]
    model = build("llama", implementation, mma=True)
    with torch.no_grad():
        packed = model(
            input_ids=input_ids,
            position_ids=position_ids,
            mma_roles=torch.cat([first, second], 1),
            use_cache=False,
        ).logits
        alone = model(input_ids=input_ids[:, :6], mma_roles=first, use_cache=False).logits
        second_alone = model(input_ids=input_ids[:, 6:], mma_roles=second, use_cache=False).logits
    torch.testing.assert_close(packed[:, :6], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, 6:], second_alone, atol=1e-5, rtol=0)
