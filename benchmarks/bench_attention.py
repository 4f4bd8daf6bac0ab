"""Attention alone: what each MMA path costs against causal SDPA, and how much memory the flex path needs.

Variants, all returning the ``(B, L, H, D)`` output the attention interface expects:

* causal SDPA (``is_causal``): the baseline, through transformers' ``sdpa_attention_forward``;
* SDPA with the dense boolean MMA mask ``[B, 1, L, L]`` (mask built beforehand, not timed);
* compiled FlexAttention with the ``BlockMask`` of ``MmaLayout.block_mask`` (forward only: no CPU backward),
  and, to tell the kernel from the mask, with a plain causal ``BlockMask``;
* aki's media-row patch (``aki_mma_sdpa``): causal SDPA for every row, then the media rows again over the
  prompt span. Its mask is built once per model forward and shared by all layers, so it is timed apart.

Then the memory of the mask builders and of the compiled flex forward at three lengths, from
``torch.profiler`` (CPU allocations through the ATen allocator): the block mask grows with ``(L / 128)^2``
block tables, the dense mask with ``L^2``.

Run: ``python benchmarks/bench_attention.py`` (about 4 minutes) or ``--quick``.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.profiler import ProfilerActivity, profile
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from _common import (
    MULTI_IMAGE,
    QUICK_MULTI_IMAGE,
    QUICK_SINGLE_IMAGE,
    SINGLE_IMAGE,
    layout_roles,
    parse_args,
    print_times,
    report_check,
    report_ratio,
    time_interleaved,
)
from aki.integration import mma_context
from aki.mma import MmaLayout, mma_layout

HEADS, HEAD_DIM = 8, 64
MMA_SDPA = ALL_ATTENTION_FUNCTIONS["aki_mma_sdpa"]  # what enable_mma registered with transformers
# What the attention interface hands to an attention function; only these attributes are read.
MODULE = types.SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)


def patch_mask(layout: MmaLayout):
    """The mask ``aki_mma_sdpa`` gets from its mask interface for a full prefill / training forward."""
    batch, length = layout.valid.shape
    with mma_context(layout):
        return ALL_MASK_ATTENTION_FUNCTIONS["aki_mma_sdpa"](
            batch_size=batch,
            q_length=length,
            kv_length=length,
            q_offset=0,
            kv_offset=0,
            mask_function=causal_mask_function,
            attention_mask=None,
            allow_is_causal_skip=True,
            dtype=torch.float32,
            config=None,
            use_vmap=False,
            device=layout.valid.device,
        )


def attention_variants(q, k, v, layout: MmaLayout, roles: torch.Tensor, flex) -> dict[str, Callable]:
    """Forward callables of every path, masks built beforehand (the patch is also timed with its build)."""
    dense = layout.dense()  # (B, 1, L, L)
    block_mask = layout.block_mask()
    # What aki_mma_flex builds: every kept block evaluates mask_mod (room for a sliding-window overlay).
    checked_block_mask = layout.block_mask(full_blocks=False)
    length = layout.length
    causal_block_mask = create_block_mask(_causal, None, None, length, length, device="cpu", _compile=False)
    patch = patch_mask(layout)
    return {
        "causal SDPA (is_causal)": lambda: sdpa_attention_forward(MODULE, q, k, v, None)[0],
        "SDPA + dense bool MMA mask": lambda: sdpa_attention_forward(MODULE, q, k, v, dense)[0],
        "flex + plain causal BlockMask (not MMA)": lambda: (
            flex(q, k, v, block_mask=causal_block_mask).transpose(1, 2).contiguous()
        ),
        "flex + MMA BlockMask": lambda: flex(q, k, v, block_mask=block_mask).transpose(1, 2).contiguous(),
        "flex + MMA BlockMask, full_blocks=False": lambda: (
            flex(q, k, v, block_mask=checked_block_mask).transpose(1, 2).contiguous()
        ),
        "aki media-row patch": lambda: MMA_SDPA(MODULE, q, k, v, patch)[0],
        "aki media-row patch + its mask build": lambda: MMA_SDPA(
            MODULE, q, k, v, patch_mask(mma_layout(roles))
        )[0],
    }


def _causal(batch, head, query, key):
    return query >= key


def backward_of(forward: Callable, tensors: tuple[torch.Tensor, ...], grad_out: torch.Tensor) -> Callable:
    def step():
        for tensor in tensors:
            tensor.grad = None
        forward().backward(grad_out)

    return step


def bench_layout(name: str, prompt, *, batch: int, length: int, flex, flex_label: str, repeats: int) -> None:
    roles = layout_roles(prompt, batch=batch, length=length)
    layout = mma_layout(roles)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, HEADS, length, HEAD_DIM, generator=generator) for _ in range(3))
    forwards = attention_variants(q, k, v, layout, roles, flex)
    tag = f"L={length} {name}"

    with torch.no_grad():
        outputs = {label: forward() for label, forward in forwards.items()}
        reference = outputs["SDPA + dense bool MMA mask"]
        for label in (
            "flex + MMA BlockMask",
            "flex + MMA BlockMask, full_blocks=False",
            "aki media-row patch",
        ):
            error = (outputs[label] - reference).abs().max().item()
            report_check(f"{tag} {label} == dense-mask SDPA", error < 1e-4, f"max |diff| {error:.1e}")
        changed = (outputs["causal SDPA (is_causal)"] - reference).abs().max().item()
        report_check(f"{tag} MMA changes the output", changed > 1e-3, f"max |MMA - causal| {changed:.2f}")
        medians = time_interleaved(forwards, repeats=repeats)
    print_times(
        f"forward, {tag}, B={batch}, {HEADS} heads x {HEAD_DIM} (flex: {flex_label})",
        medians,
        "causal SDPA (is_causal)",
    )
    causal = medians["causal SDPA (is_causal)"]
    report_ratio(
        f"attention fwd {tag}: dense-mask SDPA / causal SDPA", medians["SDPA + dense bool MMA mask"] / causal
    )
    report_ratio(
        f"attention fwd {tag}: flex BlockMask ({flex_label}) / causal SDPA",
        medians["flex + MMA BlockMask"] / causal,
        target=1.05,
    )
    report_ratio(
        f"attention fwd {tag}: flex plain causal BlockMask ({flex_label}) / causal SDPA",
        medians["flex + plain causal BlockMask (not MMA)"] / causal,
    )
    report_ratio(
        f"attention fwd {tag}: flex BlockMask full_blocks=False (as aki_mma_flex) / causal SDPA",
        medians["flex + MMA BlockMask, full_blocks=False"] / causal,
    )
    report_ratio(f"attention fwd {tag}: aki patch / causal SDPA", medians["aki media-row patch"] / causal)
    report_ratio(
        f"attention fwd {tag}: aki patch incl. mask build / causal SDPA",
        medians["aki media-row patch + its mask build"] / causal,
    )

    tensors = tuple(t.requires_grad_() for t in (q, k, v))
    grad_out = torch.randn(batch, length, HEADS, HEAD_DIM, generator=generator)
    trainable = ("causal SDPA (is_causal)", "SDPA + dense bool MMA mask", "aki media-row patch")
    steps = {label: backward_of(forwards[label], tensors, grad_out) for label in trainable}
    medians = time_interleaved(steps, repeats=repeats)
    print_times(f"forward + backward, {tag} (flex: no backward on CPU)", medians, "causal SDPA (is_causal)")
    causal = medians["causal SDPA (is_causal)"]
    report_ratio(
        f"attention fwd+bwd {tag}: dense-mask SDPA / causal SDPA",
        medians["SDPA + dense bool MMA mask"] / causal,
    )
    report_ratio(f"attention fwd+bwd {tag}: aki patch / causal SDPA", medians["aki media-row patch"] / causal)
    for tensor in tensors:
        tensor.requires_grad_(False)


def largest_allocation(function: Callable) -> int:
    """Bytes of the largest allocation one operator makes while ``function`` runs (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return max((event.self_cpu_memory_usage for event in profiler.events()), default=0)


def bench_memory(prompt, *, batch: int, lengths: tuple[int, ...], flex, compiled: bool, repeats: int) -> None:
    """Time and allocations of the mask builders (and of the compiled flex forward) as the length doubles."""
    print(f"\n## mask build and flex forward memory, B={batch} (torch.profiler, ATen CPU allocations)")
    print(f"  {'L':>5} {'what':<44} {'median ms':>10} {'largest allocation':>19}")
    largest_by_length = {}
    for length in lengths:
        roles = layout_roles(prompt, batch=batch, length=length)
        layout = mma_layout(roles)
        builders = {
            "MmaLayout.block_mask() (aki)": layout.block_mask,
            "MmaLayout.dense() [B,1,L,L] bool": layout.dense,
            "torch create_block_mask(mask_function)": lambda layout=layout, length=length: create_block_mask(
                layout.mask_function(), batch, None, length, length, device="cpu", _compile=False
            ),
        }
        if compiled:
            q = torch.randn(batch, HEADS, length, HEAD_DIM)
            block_mask = layout.block_mask()
            with torch.no_grad():
                flex(q, q, q, block_mask=block_mask)  # compile this shape outside timing and profiling

            def flex_forward(q=q, block_mask=block_mask):
                with torch.no_grad():
                    return flex(q, q, q, block_mask=block_mask)

            builders["compiled flex forward (BlockMask given)"] = flex_forward
        medians = time_interleaved(builders, repeats=repeats)
        for label, build in builders.items():
            largest = largest_by_length[label, length] = largest_allocation(build)
            print(f"  {length:>5} {label:<44} {medians[label] * 1e3:10.2f} {_mib(largest):>19}")
        print(
            f"  {length:>5} {'(for scale: one [B,1,L,L] bool mask)':<44} {'':>10} {_mib(batch * length * length):>19}"
        )
    first, last = lengths[0], lengths[-1]
    for label in ("MmaLayout.block_mask() (aki)", "MmaLayout.dense() [B,1,L,L] bool"):
        growth = largest_by_length[label, last] / max(1, largest_by_length[label, first])
        report_ratio(f"largest allocation {label}, L={last} / L={first} (L x{last // first})", growth)
    if compiled:
        label = "compiled flex forward (BlockMask given)"
        output_bytes = {length: batch * HEADS * length * HEAD_DIM * 4 for length in lengths}
        report_check(
            "flex path allocates nothing larger than its (B,L,H,D) output: no [B,1,L,L] tensor",
            all(largest_by_length[label, length] <= output_bytes[length] for length in lengths),
            ", ".join(
                f"L={length}: {_mib(largest_by_length[label, length])} vs output {_mib(output_bytes[length])}"
                for length in lengths
            ),
        )
        growth = largest_by_length[label, last] / max(1, largest_by_length[label, first])
        report_ratio(f"largest allocation {label}, L={last} / L={first} (L x{last // first})", growth)


def _mib(size: int) -> str:
    return f"{size / 2**20:.3f} MiB"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=7)
    if args.quick:
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        # Compiling flex takes 5-30 s per shape: --quick runs it uncompiled (same BlockMask, slower kernel).
        flex, flex_label, compiled = flex_attention, "uncompiled", False
        batch, length, lengths = 2, 256, (128, 256, 512)
        layouts = {"single image": QUICK_SINGLE_IMAGE, "multi image": QUICK_MULTI_IMAGE}
    else:
        flex, flex_label, compiled = torch.compile(flex_attention, dynamic=False), "compiled", True
        batch, length, lengths = 4, 2048, (1024, 2048, 4096)
        layouts = {"single image": SINGLE_IMAGE, "multi image": MULTI_IMAGE}
    for name, prompt in layouts.items():
        bench_layout(
            name, prompt, batch=batch, length=length, flex=flex, flex_label=flex_label, repeats=args.repeats
        )
    bench_memory(
        layouts["single image"],
        batch=batch,
        lengths=lengths,
        flex=flex,
        compiled=compiled,
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
