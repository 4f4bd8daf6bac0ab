"""``aki_mma_flex_compiled``: compiled FlexAttention, one fixed shape (one compile, 10-20 s on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from .tiny import batch, build, logits, reference_logits

LAYOUTS = ["T M M M T T R R T M M T R R", "T M M M M T T R R R M M T T R R"]


@pytest.mark.slow
def test_compiled_flex_equals_the_dense_reference():
    """The compiled flex path computes the rule: logits equal the dense reference, padding included."""
    inputs, roles = batch("gemma3", LAYOUTS)
    model = build("gemma3", "flex_attention_compiled", mma=True)
    valid = inputs["attention_mask"].bool()
    expected = reference_logits("gemma3", inputs, roles)[valid]
    torch.testing.assert_close(logits(model, inputs, roles)[valid], expected, atol=1e-5, rtol=0)
