"""Sliding-window layers under MMA attend to ``window AND (causal OR MMA)``.

Method: the reference runs the *plain* eager model with one prepared 4D mask per layer type (Gemma3 takes a
dict ``{layer type: mask}``; Mistral's layers are all sliding), each built by the loop-based reading of the
rule in ``tiny.rule_mask`` intersected with the window ``k > q - window``. The first test shows that this
reading of the window is transformers' own (no MMA: reference == plain model with its 2D mask); the second
that every MMA backend matches it, and that the window really cuts this layout (the reference without the
window differs), so a backend that dropped the window, or MMA on the sliding layers, would fail.
"""

from __future__ import annotations

import pytest
import torch

from aki.mma import Role

from .tiny import IMPLEMENTATIONS, SLIDING_FAMILIES, WINDOW, batch, build, logits, reference_logits

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# Media rows 5-9 see 4 keys back (window) and the text 10-12 ahead; the prompt is longer than the window.
LAYOUTS = ["T T T T T M M M M M T T T R R R", "T T M M M T T T T T T R R R"]


@pytest.mark.parametrize("name", SLIDING_FAMILIES)
def test_the_reference_reads_the_window_as_transformers_does(name):
    """Without media, the reference masks reproduce the plain model's own sliding-window attention."""
    inputs, roles = batch(name, LAYOUTS)
    text_roles = torch.where(roles == Role.MEDIA, Role.TEXT, roles)
    valid = inputs["attention_mask"].bool()
    expected = logits(build(name, "eager"), inputs)
    torch.testing.assert_close(
        reference_logits(name, inputs, text_roles)[valid], expected[valid], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", SLIDING_FAMILIES)
def test_sliding_layers_apply_the_window_and_mma(name, implementation):
    """Logits equal the windowed MMA reference, which differs from the same rule without the window."""
    assert len(LAYOUTS[0].split()) > 2 * WINDOW
    inputs, roles = batch(name, LAYOUTS)
    valid = inputs["attention_mask"].bool()
    windowed = reference_logits(name, inputs, roles)[valid]
    unwindowed = reference_logits(name, inputs, roles, windows=False)[valid]
    actual = logits(build(name, implementation, mma=True), inputs, roles)[valid]
    torch.testing.assert_close(actual, windowed, atol=1e-5, rtol=0)
    assert (actual - unwindowed).abs().max() > 1e-3
