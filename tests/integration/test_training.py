"""Training through MMA: loss and gradients of aki_mma_sdpa and aki_mma_eager equal the dense reference."""

from __future__ import annotations

import pytest
import torch

from aki.mma import Role

from .tiny import batch, build, reference_masks

IGNORE = -100
LAYOUTS = ["T M M M T T R R T M M T R R", "T M M M M T T R R R M M T T R R"]


def loss_and_gradients(model, inputs: dict, labels: torch.Tensor, **extra):
    model.train()
    loss = model(**inputs, labels=labels, **extra).loss
    loss.backward()
    return loss.detach(), {name: parameter.grad for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "causal_stand_in"])
@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_gradients_equal_the_dense_reference(name, implementation):
    """Backward through the MMA implementation gives the gradients of the plain model with dense 4D masks."""
    inputs, roles = batch(name, LAYOUTS)
    labels = torch.where(
        (roles == Role.RESPONSE) & inputs["attention_mask"].bool(), inputs["input_ids"], IGNORE
    )
    loss, gradients = loss_and_gradients(
        build(name, implementation, mma=True), inputs, labels, mma_roles=roles
    )

    reference = build(name, "eager")
    masks = reference_masks(reference, roles, inputs["attention_mask"])
    expected_loss, expected = loss_and_gradients(reference, dict(inputs, attention_mask=masks), labels)
    causal_loss, _ = loss_and_gradients(build(name), inputs, labels)

    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=0)
    assert (loss - causal_loss).abs() > 1e-5  # the answers read media rows that MMA changed
    assert gradients.keys() == expected.keys()
    for key, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected[key], atol=1e-6, rtol=1e-4, msg=key)


def test_the_sdpa_merge_passes_gradcheck_and_equals_the_dense_rule_in_float64():
    """aki_mma_sdpa's log-sum-exp merge (the causal pass plus each media row's keys that MMA adds) has the gradients
    of one softmax over both key sets: gradcheck in float64, with padding and grouped-query heads, and output and
    gradients equal SDPA with the dense rule mask on the valid rows.
    """
    import types

    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from aki.integration import MediaRowPatch, mma_context
    from aki.mma import mma_layout

    from .tiny import rule_mask

    inputs, roles = batch("llama", LAYOUTS)  # row 0 left-padded
    attention_mask = inputs["attention_mask"]
    size, length = roles.shape
    with mma_context(mma_layout(roles, attention_mask)):
        patch = ALL_MASK_ATTENTION_FUNCTIONS["aki_mma_sdpa"](
            batch_size=size,
            q_length=length,
            kv_length=length,
            mask_function=causal_mask_function,
            attention_mask=attention_mask.bool(),  # as transformers hands it over
            dtype=torch.float64,
            config=None,
            device="cpu",
        )
    assert isinstance(patch, MediaRowPatch) and patch.extension_keys is not None and patch.base is not None
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=2, training=False)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(size, 4, length, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    key, value = (
        torch.randn(size, 2, length, 8, dtype=torch.float64, generator=generator, requires_grad=True)
        for _ in range(2)
    )

    def merged(query, key, value):
        return ALL_ATTENTION_FUNCTIONS["aki_mma_sdpa"](module, query, key, value, patch)[0]  # (B, L, H, D)

    def dense(query, key, value):
        allowed = rule_mask(roles, attention_mask)  # (B, 1, L, L)
        output = torch.nn.functional.scaled_dot_product_attention(
            query, repeat_kv(key, 2), repeat_kv(value, 2), attn_mask=allowed
        )
        return output.transpose(1, 2)

    assert torch.autograd.gradcheck(merged, (query, key, value), fast_mode=True)
    valid = attention_mask.bool()
    mine, theirs = merged(query, key, value)[valid], dense(query, key, value)[valid]
    torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=0)
    weights = torch.randn(mine.shape, dtype=torch.float64, generator=generator)
    for ours, reference in zip(
        torch.autograd.grad((mine * weights).sum(), (query, key, value)),
        torch.autograd.grad((theirs * weights).sum(), (query, key, value)),
        strict=True,
    ):
        torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)
