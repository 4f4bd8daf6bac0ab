"""Attention alone with many media tokens, where the split costs most: four 576-token images at L=4096.

56 % of the rows are media (``MANY_IMAGES``). Variants, each returning the ``(B, L, H, D)`` output of the
attention interface, with their masks built beforehand (a model builds them once per forward for all layers):

* causal SDPA (``is_causal``): the baseline;
* ``aki_mma_sdpa``: what ``enable_mma`` runs on an sdpa model;
* the causal stand-in kernel (``benchmarks/_common.py``, a CPU FlashAttention stand-in) alone, and
  ``aki_mma_causal_stand_in``: the split on top of it, as on FlashAttention (the media rows recomputed with SDPA).

Every MMA variant is checked against SDPA with the dense MMA mask, forward and gradients, before timing.
Then forward, and forward + backward, MMA / causal; and the cost of the masks' build, once per model forward.

Run: ``python benchmarks/bench_many_media.py --threads 1 --clock cpu`` (about 4 minutes) or ``--quick`` (which
also takes the split below ``SDPA_DENSE_MASK_MAX_KEYS``, so that its checks cover it).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import aki.integration
from _common import (
    MANY_IMAGES,
    QUICK_MANY_IMAGES,
    causal_stand_in,
    layout_roles,
    parse_args,
    print_times,
    register_causal_stand_in,
    report_check,
    report_ratio,
    split_mask,
    time_interleaved,
)
from aki.integration import mma_implementation
from aki.mma import Role, mma_layout

HEADS, HEAD_DIM = 8, 64
# What the attention interface hands to an attention function; only these attributes are read.
MODULE = types.SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
CAUSAL = "causal SDPA (is_causal)"
MMA_SDPA = "MMA: aki_mma_sdpa"
STAND_IN = "stand-in kernel alone (causal)"
MMA_STAND_IN = "MMA: aki_mma_causal_stand_in (split)"
DENSE = "SDPA + dense bool MMA mask (reference)"


def variants(q, k, v, roles: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Forward callables returning ``(B, L, H, D)``; the masks are built here, once."""
    layout = mma_layout(roles)
    split_on_stand_in = mma_implementation(register_causal_stand_in())
    sdpa_patch = split_mask(layout, "aki_mma_sdpa")
    stand_in_patch = split_mask(layout, split_on_stand_in)
    dense = layout.dense()  # (B, 1, L, L)
    return {
        CAUSAL: lambda: sdpa_attention_forward(MODULE, q, k, v, None)[0],
        MMA_SDPA: lambda: ALL_ATTENTION_FUNCTIONS["aki_mma_sdpa"](MODULE, q, k, v, sdpa_patch)[0],
        STAND_IN: lambda: causal_stand_in(MODULE, q, k, v, None)[0],
        MMA_STAND_IN: lambda: ALL_ATTENTION_FUNCTIONS[split_on_stand_in](MODULE, q, k, v, stand_in_patch)[0],
        DENSE: lambda: sdpa_attention_forward(MODULE, q, k, v, dense)[0],
    }


def check_exact(forwards: dict[str, Callable], tensors, grad_out: torch.Tensor, tag: str) -> None:
    """Each MMA variant's output and gradients equal the dense reference's, and MMA changes the output."""
    results = {}
    for label in (CAUSAL, MMA_SDPA, MMA_STAND_IN, DENSE):
        output = forwards[label]()
        results[label] = (output.detach(), *torch.autograd.grad(output, tensors, grad_out))
    reference = results[DENSE]
    for label in (MMA_SDPA, MMA_STAND_IN):
        errors = [
            (mine - theirs).abs().max().item() for mine, theirs in zip(results[label], reference, strict=True)
        ]
        detail = ", ".join(
            f"{name} {error:.1e}" for name, error in zip(("out", "dq", "dk", "dv"), errors, strict=True)
        )
        report_check(f"{tag} {label} == dense-mask SDPA (output, gradients)", max(errors) < 1e-4, detail)
    changed = (results[CAUSAL][0] - reference[0]).abs().max().item()
    report_check(f"{tag} MMA changes the output", changed > 1e-3, f"max |MMA - causal| {changed:.2f}")


def backward_of(forward: Callable, tensors, grad_out: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for tensor in tensors:
            tensor.grad = None
        forward().backward(grad_out)

    return step


def bench(prompt: str, *, batch: int, length: int, repeats: int) -> None:
    roles = layout_roles(prompt, batch=batch, length=length)
    share = float((roles == Role.MEDIA).float().mean())
    tag = f"L={length} many images"
    print(f"\n# {tag}: B={batch}, {HEADS} heads x {HEAD_DIM}, {share:.0%} of the rows are media")
    generator = torch.Generator().manual_seed(0)
    tensors = tuple(
        torch.randn(batch, HEADS, length, HEAD_DIM, generator=generator).requires_grad_() for _ in range(3)
    )
    grad_out = torch.randn(batch, length, HEADS, HEAD_DIM, generator=generator)
    forwards = variants(*tensors, roles)
    check_exact(forwards, tensors, grad_out, tag)
    timed = (CAUSAL, MMA_SDPA, STAND_IN, MMA_STAND_IN)

    with torch.no_grad():
        medians = time_interleaved({label: forwards[label] for label in timed}, repeats=repeats)
    print_times(f"forward (no grad), {tag}", medians, CAUSAL)
    report_ratio(f"attention fwd {tag}: aki_mma_sdpa / causal SDPA", medians[MMA_SDPA] / medians[CAUSAL])
    report_ratio(
        f"attention fwd {tag}: split on the stand-in / stand-in alone",
        medians[MMA_STAND_IN] / medians[STAND_IN],
    )
    causal_forward = medians[CAUSAL]

    steps = {label: backward_of(forwards[label], tensors, grad_out) for label in timed}
    medians = time_interleaved(steps, repeats=repeats)
    print_times(f"forward + backward, {tag}", medians, CAUSAL)
    report_ratio(f"attention fwd+bwd {tag}: aki_mma_sdpa / causal SDPA", medians[MMA_SDPA] / medians[CAUSAL])
    report_ratio(
        f"attention fwd+bwd {tag}: split on the stand-in / stand-in alone",
        medians[MMA_STAND_IN] / medians[STAND_IN],
    )

    layout = mma_layout(roles)
    builds = time_interleaved(
        {
            name: lambda name=name: split_mask(layout, name)
            for name in ("aki_mma_sdpa", "aki_mma_causal_stand_in")
        },
        repeats=repeats,
    )
    for name, seconds in builds.items():
        report_ratio(
            f"{tag}: {name} mask build (once per model forward) / one causal fwd", seconds / causal_forward
        )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=5)
    if args.quick:
        aki.integration.SDPA_DENSE_MASK_MAX_KEYS = (
            0  # the split at the quick length too (dense below 512 keys)
        )
        bench(QUICK_MANY_IMAGES, batch=2, length=256, repeats=args.repeats)
    else:
        bench(MANY_IMAGES, batch=2, length=4096, repeats=args.repeats)


if __name__ == "__main__":
    main()
