"""``enable_mma`` on every model family: each backend computes the MMA rule, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from aki.integration import MMA_IMPLEMENTATIONS, disable_mma, enable_mma, is_mma_enabled
from aki.mma import Role, mma_additive_mask, mma_mask

from .tiny import (
    FAMILIES,
    IMPLEMENTATIONS,
    additive,
    batch,
    build,
    logits,
    reference_logits,
    rule_mask,
    text_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# Two turns per row, row 0 left-padded. Text models: media runs of any length; VLMs: 4 tokens per image.
TEXT_LAYOUTS = ["T M M M T T R R T M M T R R", "T M M M M T T R R R M M T T R R"]
VLM_LAYOUTS = ["T M M M M T T T R R T M M M M T R R", "T T M M M M T T T T R R R"]


def layouts(name: str) -> list[str]:
    return VLM_LAYOUTS if FAMILIES[name].is_vlm else TEXT_LAYOUTS


def test_the_reference_rule_is_the_rule_of_aki_mma():
    """The loop-based reading of the spec used as reference here agrees with ``aki.mma``'s dense masks."""
    for rows in (TEXT_LAYOUTS, VLM_LAYOUTS):
        inputs, roles = batch("llama", rows)
        attention_mask = inputs["attention_mask"]
        valid = attention_mask.bool()  # rows of padded queries are free
        expected = rule_mask(roles, attention_mask)[:, 0][valid]
        assert torch.equal(mma_mask(roles, attention_mask)[:, 0][valid], expected)
        assert torch.equal(mma_additive_mask(roles, attention_mask)[:, 0][valid], additive(expected))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", FAMILIES)
def test_logits_equal_the_dense_reference(name, implementation):
    """eager, sdpa and flex all give the logits of the plain eager model run with the dense rule as 4D masks.

    Text models and Llava take the roles explicitly; padding and two turns per row are included. Sliding
    layers (Mistral, Gemma3) are compared with ``window AND (causal OR MMA)``.
    """
    inputs, roles = batch(name, layouts(name))
    expected = reference_logits(name, inputs, roles)
    actual = logits(build(name, implementation, mma=True), inputs, roles)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["sdpa", "causal_stand_in"])
@pytest.mark.parametrize("name", FAMILIES)
def test_mma_changes_every_media_row_and_no_row_before_the_first_media(name, implementation):
    """MMA is really applied (no silent causal fallback): each media row's logits move away from causal, on
    sdpa and on a kernel that ignores masks as FlashAttention does.
    """
    inputs, roles = batch(name, layouts(name))
    causal = logits(build(name, implementation), inputs)
    mma = logits(build(name, implementation, mma=True), inputs, roles)
    change = (mma - causal).abs().amax(-1)  # (B, L)
    valid = inputs["attention_mask"].bool()
    before_media = valid & ((roles == Role.MEDIA).cumsum(-1) == 0)
    assert change[roles == Role.MEDIA].min() > 1e-4
    assert change[before_media].max() < 1e-6


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_calls_without_media_are_bit_identical_to_the_plain_model(name, implementation):
    """Text only: ``mma_roles=None``, or roles without MEDIA, give exactly the unpatched model's logits."""
    inputs, roles = batch(name, ["T T T T R R R", "T T T R R R R R"])
    plain = logits(build(name, implementation), inputs)
    model = build(name, implementation, mma=True)
    assert torch.equal(logits(model, inputs), plain)
    assert torch.equal(logits(model, inputs, roles), plain)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_enable_mma_keeps_the_implementation_and_touches_only_the_language_model(implementation):
    """sdpa -> aki_mma_sdpa, eager -> aki_mma_eager, flex -> aki_mma_flex; a VLM's vision tower keeps its own."""
    model = build("llava", implementation)
    assert enable_mma(model) is model
    assert text_config(model)._attn_implementation == MMA_IMPLEMENTATIONS[implementation]
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert is_mma_enabled(model) and isinstance(model, FAMILIES["llava"].model_class)
    enable_mma(model)  # idempotent
    assert text_config(model)._attn_implementation == MMA_IMPLEMENTATIONS[implementation]


@pytest.mark.parametrize("name", FAMILIES)
def test_disable_mma_restores_the_class_and_the_plain_implementation(name):
    """After ``disable_mma`` the model is its own class again, on eager, and computes causal attention."""
    model = build(name, "eager")
    plain_class = type(model)
    enable_mma(model)
    assert type(model) is not plain_class and type(model).__name__ == plain_class.__name__
    assert text_config(model)._attn_implementation == "aki_mma_eager"

    assert disable_mma(model) is model
    assert type(model) is plain_class and not is_mma_enabled(model)
    assert text_config(model)._attn_implementation == "eager"
    inputs, _ = batch(name, layouts(name))
    assert torch.equal(logits(model, inputs), logits(build(name, "eager"), inputs))


@pytest.mark.parametrize("name", FAMILIES)
def test_short_sequences_take_the_dense_sdpa_mask_with_the_same_logits(name, monkeypatch):
    """Below ``SDPA_DENSE_MASK_MAX_KEYS`` keys, aki_mma_sdpa hands SDPA one dense mask: same rule, same logits."""
    import aki.integration

    monkeypatch.setattr(aki.integration, "SDPA_DENSE_MASK_MAX_KEYS", 512)
    inputs, roles = batch(name, layouts(name))
    expected = reference_logits(name, inputs, roles)
    actual = logits(build(name, "sdpa", mma=True), inputs, roles)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)
