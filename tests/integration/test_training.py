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
