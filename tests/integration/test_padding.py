"""Padding, left or right, does not change the logits of valid positions under MMA."""

from __future__ import annotations

import pytest
import torch

from .tiny import FAMILIES, batch, build, logits, unpadded_rows

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

LAYOUTS = {
    False: ["T M M M T T R R T M M T", "T M M M M T T R R R M M T T R R"],
    True: ["T M M M M T T T R R", "T T M M M M T T T T R R R T M M M M T R"],
}
CASES = [(name, "sdpa") for name in FAMILIES] + [
    ("llama", "eager"),
    ("llama", "flex_attention"),
    ("gemma3", "eager"),
    ("gemma3", "flex_attention"),
    ("llama", "causal_stand_in"),
    ("gemma3", "causal_stand_in"),
    ("llava", "causal_stand_in"),
]


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize(("name", "implementation"), CASES)
def test_padding_does_not_change_the_logits_of_valid_positions(name, implementation, padding):
    """A padded batch gives, at valid positions, the logits of each row run alone (position ids from the mask)."""
    inputs, roles = batch(name, LAYOUTS[FAMILIES[name].is_vlm], padding=padding)
    model = build(name, implementation, mma=True)
    padded = logits(model, inputs, roles)
    for b, (row_inputs, row_roles) in enumerate(unpadded_rows(name, inputs, roles)):
        valid = inputs["attention_mask"][b].bool()
        torch.testing.assert_close(
            padded[b, valid], logits(model, row_inputs, row_roles)[0], atol=1e-5, rtol=0
        )
