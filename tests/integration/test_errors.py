"""``enable_mma`` fails loudly: bad roles and implementations MMA cannot run on raise errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from aki.integration import MMA_IMPLEMENTATIONS, disable_mma, enable_mma
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


@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_runs_mma_by_the_split_instead_of_being_refused(kernel):
    """A flash kernel computes causal attention for every row; MMA recomputes only the media rows on top of it.

    (Flash kernels need CUDA: their numbers are checked in test_kernels.py on a stand-in, and on a GPU.)
    """
    model = build("llama")
    model.config._attn_implementation = kernel
    enable_mma(model)
    assert text_config(model)._attn_implementation == f"aki_mma_{kernel}"
    assert MMA_IMPLEMENTATIONS[kernel] == f"aki_mma_{kernel}"


def test_enable_mma_refuses_an_unknown_implementation():
    with pytest.raises(ValueError, match="does not know attention implementation 'no_such_kernel'"):
        enable_mma(build("llama"), attn_implementation="no_such_kernel")


def test_enable_mma_refuses_paged_attention_naming_mma():
    with pytest.raises(ValueError, match=r"MMA cannot run on attention implementation 'paged\|sdpa'"):
        enable_mma(build("llama"), attn_implementation="paged|sdpa")


@pytest.mark.parametrize("name", ["llama", "llava"])
def test_switching_to_an_unknown_implementation_after_enable_mma_fails_at_the_next_forward(name):
    """Never a silent fallback to causal attention: the forward after the switch raises."""
    inputs, roles = batch(name, ["T M M M M T T R"])
    model = build(name, mma=True)
    text_config(model)._attn_implementation = "no_such_kernel"
    with pytest.raises(ValueError, match="MMA does not know attention implementation 'no_such_kernel'"):
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
