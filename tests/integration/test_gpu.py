"""MMA on real FlashAttention kernels (CUDA + flash-attn): the split on top of flash_attention_2 gives the
logits of MMA on sdpa, in bf16, padded and when generating. On a machine without them every test skips.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from aki.mma import Role

from .tiny import batch, build

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA (FlashAttention kernels run on GPUs)"
    ),
    pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs the flash-attn package"),
]

LAYOUTS = ["T M M M M T T T R R R", "T T M M M M T T R R R R"]


def _on_gpu(implementation: str):
    return build("llava", implementation, mma=True).to("cuda", torch.bfloat16)


@pytest.mark.parametrize("kernel", ["flash_attention_2"])
def test_flash_attention_with_mma_equals_sdpa_with_mma_in_bf16(kernel):
    inputs, roles = batch("llava", LAYOUTS)
    inputs = {k: v.cuda() for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    with torch.no_grad():
        flash = _on_gpu(kernel)(**inputs, mma_roles=roles.cuda()).logits.float()
        sdpa = _on_gpu("sdpa")(**inputs, mma_roles=roles.cuda()).logits.float()
        causal = build("llava", kernel).to("cuda", torch.bfloat16)(**inputs).logits.float()
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(flash[valid], sdpa[valid], atol=3e-2, rtol=0)
    media = roles.cuda() == Role.MEDIA
    assert (flash - causal).abs().amax(-1)[media].min() > 1e-3  # MMA really changed the media rows


def test_generation_on_flash_attention_with_mma_equals_sdpa():
    inputs, _ = batch("llava", ["T M M M M T T T", "T T M M M M T T"])
    inputs.pop("position_ids")
    inputs = {k: v.cuda() for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    options = dict(max_new_tokens=4, do_sample=False)
    flash = _on_gpu("flash_attention_2").generate(**inputs, **options)
    sdpa = _on_gpu("sdpa").generate(**inputs, **options)
    assert torch.equal(flash, sdpa)
