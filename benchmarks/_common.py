"""Shared helpers of the benchmark scripts: arguments, layouts, interleaved timing and report lines.

Every script compares variants measured in one run: the variants alternate inside each repetition (the
order rotates every round, so drift of the machine hits all of them alike), after a warm-up, and the
median of each is reported. Ratio lines start with ``RATIO`` and say PASS/FAIL against a target when
the issue names one; a missed target is reported, never raised.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface, LlamaConfig
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    causal_mask_function,
    flash_attention_mask,
)

from aki.integration import mma_context
from aki.mma import MmaLayout, parse_layout

# Prompts (T = text, M = media, R = response), each followed by RESPONSE up to the sequence length.
# One 144-token image after 32 text tokens, then a 96-token question: the AKI SFT layout.
SINGLE_IMAGE = "T" * 32 + "M" * 144 + "T" * 96
# Two images in the first turn, a 512-token answer, then a second turn with a third image.
MULTI_IMAGE = (
    "T" * 32 + "M" * 144 + "T" * 16 + "M" * 144 + "T" * 96 + "R" * 512 + "T" * 32 + "M" * 144 + "T" * 96
)
# The same layouts shrunk for --quick runs.
QUICK_SINGLE_IMAGE = "T" * 8 + "M" * 36 + "T" * 24
QUICK_MULTI_IMAGE = (
    "T" * 8 + "M" * 36 + "T" * 4 + "M" * 36 + "T" * 24 + "R" * 32 + "T" * 8 + "M" * 36 + "T" * 24
)
# Many media tokens: four 576-token images (LLaVA-1.5's 24 x 24 patches), a short caption after each, then the
# question; at L=4096, 2304 of the rows (56 %) are media.
MANY_IMAGES = "T" * 32 + ("M" * 576 + "T" * 16) * 3 + "M" * 576 + "T" * 96
QUICK_MANY_IMAGES = "T" * 8 + ("M" * 36 + "T" * 4) * 3 + "M" * 36 + "T" * 24

# The tiny Llama of the training-step scripts: 4 layers, hidden 256, 8 heads x 32 (no GQA), MLP 1024.
TINY_LLAMA_VOCAB = 1024

# The attention implementation name of the FlashAttention stand-in (register_causal_stand_in).
CAUSAL_STAND_IN = "causal_stand_in"


# What a sample measures: elapsed time, or CPU time of this process (all its threads; at one thread it
# does not count the time other processes hold the core, but it does count OpenMP spin-waits).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter  # set by parse_args (--clock)


def parse_args(description: str, *, default_repeats: int) -> argparse.Namespace:
    """Common flags (``--quick``, ``--repeats``, ``--threads``, ``--clock``); applies them and prints the setup."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="reduced sizes that run in a few seconds")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed repetitions (default {default_repeats})"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: CPU time of this process, steadier on a busy machine with --threads 1",
    )
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else default_repeats)
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCKS[args.clock]
    print(
        f"# torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
        f"{args.clock} clock, repeats {args.repeats}{', QUICK sizes' if args.quick else ''}, "
        f"load average at start {os.getloadavg()[0]:.2f} (other processes on the machine skew timings)"
    )
    return args


def tiny_llama_config(length: int, **extra) -> LlamaConfig:
    """The tiny Llama's config for sequences of ``length`` (``extra``: more config attributes)."""
    return LlamaConfig(
        vocab_size=TINY_LLAMA_VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=length,
        **extra,
    )


def layout_roles(prompt: str, *, batch: int, length: int) -> torch.Tensor:
    """Roles ``[batch, length]``: the ``prompt`` layout (``"TTMMT..."``), then RESPONSE up to ``length``."""
    if len(prompt) >= length:
        raise ValueError(f"layout of {len(prompt)} prompt tokens does not fit a sequence of length {length}")
    return parse_layout(prompt + "R" * (length - len(prompt))).expand(batch, length).clone()


def split_mask(layout: MmaLayout, implementation: str) -> Any:
    """What the mask interface of ``implementation`` (``aki_mma_sdpa``, ...) gives a full prefill / training forward.

    The model builds it once per forward and every layer shares it, so the scripts time it apart from attention.
    """
    batch, length = layout.valid.shape
    with mma_context(layout):
        return ALL_MASK_ATTENTION_FUNCTIONS[implementation](
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


def now() -> float:
    """The ``--clock`` in seconds, for a script that times a part of a call itself (``self_timed``)."""
    return _clock()


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    self_timed: bool = False,
) -> dict[str, float]:
    """Median seconds of each variant (on the ``--clock``), the variants alternating within every repetition.

    With ``self_timed``, each call returns the seconds it measured itself with :func:`now` (a trainer's step
    without the setup around it), and that is its sample.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection inside one sample would bill one variant for garbage of all
    try:
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = _clock()
                result = variants[name]()
                samples[name].append(result if self_timed else _clock() - start)
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def print_times(title: str, medians: dict[str, float], baseline: str) -> None:
    """A small table: median milliseconds of each variant and its ratio to ``baseline``."""
    print(f"\n## {title}")
    for name, seconds in medians.items():
        print(f"  {name:<48} {seconds * 1e3:10.2f} ms  {seconds / medians[baseline]:6.2f}x")


def report_ratio(label: str, value: float, *, target: float | None = None) -> None:
    """One ``RATIO`` line, with PASS/FAIL when the issue names a target (the ratio must not exceed it)."""
    verdict = (
        "" if target is None else f"  [target <= {target:.2f}x: {'PASS' if value <= target else 'FAIL'}]"
    )
    print(f"RATIO {label}: {value:.2f}x{verdict}")


def report_check(label: str, passed: bool, detail: str) -> None:
    """One ``CHECK`` line: a correctness condition the measured variants must meet."""
    print(f"CHECK {label}: {'PASS' if passed else 'FAIL'} ({detail})")


def causal_stand_in(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """A CPU stand-in for FlashAttention: causal SDPA over the keys a 2D padding mask keeps, any other mask ignored.

    It gets what transformers gives flash kernels (``flash_attention_mask``: None, or the 2D padding mask), so MMA
    reaches it only through aki's split. Sliding windows and padding-free packing are refused, not ignored.
    """
    position_ids = kwargs.get("position_ids")
    packed = attention_mask is None and position_ids is not None and bool((position_ids[..., 1:] == 0).any())
    if kwargs.get("sliding_window") is not None or packed:
        raise ValueError("the benchmarks' causal stand-in computes causal attention with padding only")
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # (B, H, Lk, D)
    q_length, kv_length = query.shape[2], key.shape[2]
    allowed = None
    if attention_mask is not None or q_length != kv_length:
        q_positions = torch.arange(kv_length - q_length, kv_length, device=query.device)[:, None]
        allowed = torch.arange(kv_length, device=query.device)[None, :] <= q_positions  # (Lq, Lk)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -kv_length:].bool()  # (B, 1, Lq, Lk)
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padded query row: finite, unused
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scaling, is_causal=allowed is None
    )
    return output.transpose(1, 2).contiguous(), None  # (B, Lq, H, D)


def register_causal_stand_in() -> str:
    """Register :func:`causal_stand_in` with transformers under :data:`CAUSAL_STAND_IN`, with flash's mask."""
    AttentionInterface.register(CAUSAL_STAND_IN, causal_stand_in)
    AttentionMaskInterface.register(CAUSAL_STAND_IN, flash_attention_mask)  # None or the 2D padding mask
    return CAUSAL_STAND_IN
