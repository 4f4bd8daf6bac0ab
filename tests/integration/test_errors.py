"""``enable_mma`` fails loudly: bad roles and flash-attention raise errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from aki.integration import disable_mma, enable_mma, is_mma_enabled
from aki.mma import Role

from .tiny import batch, build, logits, text_config

LAYOUTS = ["T M M T T R", "T T M M T R"]  # batch 2, length 6


@pytest.mark.parametrize(
    ("roles", "error", "match"),
    [
        (torch.zeros(6, dtype=torch.long), ValueError, r"shape \[batch, length\], got shape \(6,\)"),
        (
            torch.zeros(2, 1, 6, dtype=torch.long),
            ValueError,
            r"shape \[batch, length\], got shape \(2, 1, 6\)",
        ),
        (torch.zeros(3, 6, dtype=torch.long), ValueError, r"batch size 3 .*batch size 2"),
        (torch.zeros(2, 7, dtype=torch.long), ValueError, r"roles of shape \(2, 7\) do not fit .*\(2, 6\)"),
        (torch.zeros(2, 6), TypeError, r"integer tensor .*got dtype torch.float32"),
        (torch.zeros(2, 6, dtype=torch.bool), TypeError, r"integer tensor .*got dtype torch.bool"),
        (torch.tensor([[0, 1, 3, 0, 7, 2], [0] * 6]), ValueError, r"unknown role values \[3, 7\]"),
        (torch.tensor([[0, -1, 1, 0, 0, 2], [0] * 6]), ValueError, r"unknown role values \[-1\]"),
    ],
    ids=["1d", "3d", "wrong-batch", "too-long", "float", "bool", "unknown", "negative"],
)
def test_bad_roles_are_refused(roles, error, match):
    """Wrong shape, batch, length or dtype, or values that are no Role, raise with the offending value."""
    inputs, _ = batch("llama", LAYOUTS)
    with pytest.raises(error, match=match):
        build("llama", mma=True)(**inputs, mma_roles=roles)


def test_roles_longer_than_the_sequence_are_refused_without_an_attention_mask():
    """Roles that cannot belong to the input (more positions than tokens) raise, attention mask or not."""
    inputs, _ = batch("llama", LAYOUTS)
    inputs.pop("attention_mask")
    roles = torch.full((2, 7), int(Role.TEXT))
    with pytest.raises(ValueError, match=r"mma_roles of shape \(2, 7\) do not fit a sequence of 6 positions"):
        build("llama", mma=True)(**inputs, mma_roles=roles)


def test_generate_refuses_roles_of_another_batch_size():
    inputs, roles = batch("llama", LAYOUTS)
    inputs.pop("position_ids")
    with pytest.raises(ValueError, match=r"batch size 1 .*batch size 2"):
        build("llama", mma=True).generate(**inputs, mma_roles=roles[:1], max_new_tokens=2)


def test_enable_mma_refuses_a_flash_attention_model():
    """A model already on flash-attention is refused, and left as it was."""
    model = build("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"'flash_attention_2'.*flash-attention kernels ignore custom masks"):
        enable_mma(model)
    assert not is_mma_enabled(model) and model.config._attn_implementation == "flash_attention_2"


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_3"])
def test_enable_mma_refuses_to_switch_to_flash_attention(implementation):
    with pytest.raises(ValueError, match=f"'{implementation}'.*flash-attention"):
        enable_mma(build("llama"), attn_implementation=implementation)


def test_enable_mma_refuses_an_unknown_implementation():
    with pytest.raises(ValueError, match="does not know attention implementation 'paged_attention'"):
        enable_mma(build("llama"), attn_implementation="paged_attention")


@pytest.mark.parametrize("name", ["llama", "llava"])
def test_switching_to_flash_attention_after_enable_mma_fails_at_the_next_forward(name):
    """Never a silent fallback to causal attention: the forward after the switch raises."""
    inputs, roles = batch(name, ["T M M M M T T R"])
    model = build(name, mma=True)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash-attention kernels ignore custom masks"):
        model(**inputs, mma_roles=roles)


def test_switching_to_another_implementation_after_enable_mma_keeps_mma():
    """A switch to eager after ``enable_mma`` is followed: the next forward runs aki_mma_eager."""
    inputs, roles = batch("llama", LAYOUTS)
    model = build("llama", "sdpa", mma=True)
    expected = logits(model, inputs, roles)
    model.config._attn_implementation = "eager"
    actual = logits(model, inputs, roles)
    assert text_config(model)._attn_implementation == "aki_mma_eager"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_enable_mma_refuses_what_is_not_a_pretrained_model():
    with pytest.raises(TypeError, match="expects a transformers PreTrainedModel, got Linear"):
        enable_mma(torch.nn.Linear(2, 2))


def test_disable_mma_leaves_a_plain_model_alone():
    model = build("llama", "eager")
    assert disable_mma(model) is model and type(model).__name__ == "LlamaForCausalLM"
    assert model.config._attn_implementation == "eager"
