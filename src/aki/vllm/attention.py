"""Modality-Mutual Attention inside vLLM's own attention: causal paged attention, then the media rows again.

vLLM's attention backend computes every row causally, over the paged KV cache, as for any model. In a step
that prefills a whole prompt, the rows MMA changes (media tokens with prompt text after them) are then
recomputed with SDPA over that request's keys and values of the step, up to the end of the text they may
see (:func:`aki.vllm.roles.media_rows_of_step`). Decode steps stay causal. MMA changes only the media rows,
so every other row keeps the engine's own kernel, and the KV cache written for the media rows' next layer
holds their MMA outputs.

The recomputation is the custom op ``torch.ops.aki.mma_media_rows``, called from the attention backend's
``forward`` (itself inside vLLM's opaque attention op): torch.compile and CUDA graphs see one opaque call and
cannot trace the Python that picks the rows (a traced branch would be frozen at its first value: causal).
The rows of the step are computed once per forward, before the language model runs, from the step's token
ids and its attention metadata, and held in a context variable for the op.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.attention import Attention
from vllm.utils.torch_utils import direct_register_custom_op
from vllm.v1.attention.backend import AttentionType

from .roles import MmaError, MmaHeaders, RequestRows, media_rows_of_step

__all__ = ["enable_mma_attention", "mma_step"]

_ROWS: contextvars.ContextVar[list[RequestRows] | None] = contextvars.ContextVar("aki_mma_rows", default=None)
_LIBRARY = torch.library.Library("aki", "FRAGMENT")  # the op lives as long as this object


def enable_mma_attention(language_model: nn.Module) -> list[str]:
    """Give every decoder attention layer of ``language_model`` the media-row recomputation; return their names.

    Raises :class:`MmaError` for a layer whose attention the recomputation does not reproduce (ALiBi, logit
    soft-capping, attention sinks, sliding windows).
    """
    layers = [
        module
        for module in language_model.modules()
        if isinstance(module, Attention) and module.attn_type == AttentionType.DECODER
    ]
    if not layers:
        raise MmaError(f"MMA found no decoder attention layer in {type(language_model).__name__}")
    for layer in layers:
        impl = layer.impl
        unsupported = {
            "ALiBi": getattr(impl, "alibi_slopes", None) is not None,
            "logit soft-capping": bool(getattr(impl, "logits_soft_cap", 0) or 0),
            "attention sinks": getattr(impl, "sinks", None) is not None,
            "a sliding window": (getattr(impl, "sliding_window", None) or -1) not in (-1, (-1, -1)),
        }
        if any(unsupported.values()):
            names = [name for name, present in unsupported.items() if present]
            raise MmaError(
                f"MMA cannot recompute media rows of {layer.layer_name}: it uses {', '.join(names)}"
            )
        impl.__class__ = _mma_impl_class(type(impl))
    return [layer.layer_name for layer in layers]


@contextmanager
def mma_step(
    input_ids: torch.Tensor | None,
    headers: MmaHeaders,
    layer_name: str,
    is_media: torch.Tensor | None = None,
) -> Iterator[None]:
    """Find the media rows of this forward step (from ``input_ids``, the positions holding media embeddings
    and ``layer_name``'s attention metadata) and make them the rows the MMA op recomputes inside the block."""
    token = _ROWS.set(_rows_of_current_step(input_ids, headers, layer_name, is_media))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _rows_of_current_step(
    input_ids: torch.Tensor | None, headers: MmaHeaders, layer_name: str, is_media: torch.Tensor | None
) -> list[RequestRows] | None:
    if input_ids is None or not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):
        raise MmaError("MMA does not support micro-batched forwards (dual-batch overlap): disable it")
    layer_metadata = metadata.get(layer_name) if isinstance(metadata, dict) else None
    if layer_metadata is None:
        return None  # a dummy or profiling run: no requests
    query_start_loc = getattr(layer_metadata, "query_start_loc_cpu", None)
    if query_start_loc is None:
        query_start_loc = layer_metadata.query_start_loc
    query_start_loc = query_start_loc.tolist()
    seq_lens = layer_metadata.seq_lens.tolist()[: len(query_start_loc) - 1]
    count = query_start_loc[-1]
    tokens = input_ids[:count].to("cpu")
    is_media = is_media[:count].to("cpu") if is_media is not None else None
    return media_rows_of_step(tokens, query_start_loc, seq_lens, headers, is_media) or None


@functools.cache
def _mma_impl_class(base: type) -> type:
    """A subclass of an attention backend's implementation whose ``forward`` then recomputes the media rows."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        result = base.forward(
            self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs
        )
        if attn_metadata is not None and _ROWS.get() is not None:
            torch.ops.aki.mma_media_rows(query, key, value, output, layer.layer_name)
        return result

    return type(f"Mma{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def mma_media_rows(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output: torch.Tensor, layer_name: str
) -> None:
    """Overwrite the media rows of ``output`` ``(T, H, Dv)`` with SDPA over their requests' prompt spans.

    ``query`` ``(T, H, D)``, ``key`` / ``value`` ``(T, Hkv, D)``: the step's own projections (after rotary
    embeddings), which hold every key of a whole prefill.
    """
    rows_of_step = _ROWS.get()
    if not rows_of_step:
        return
    scale = get_forward_context().no_compile_layers[layer_name].impl.scale
    for request in rows_of_step:
        keys = slice(request.keys_start, request.keys_start + request.span)
        attended = torch.nn.functional.scaled_dot_product_attention(
            query[request.rows].transpose(0, 1),  # (H, N, D)
            key[keys].transpose(0, 1),  # (Hkv, span, D)
            value[keys].transpose(0, 1),
            attn_mask=request.mask.to(query.device),
            scale=scale,
            enable_gqa=query.shape[1] != key.shape[1],
        )  # (H, N, Dv)
        output[request.rows] = attended.transpose(0, 1).to(output.dtype)


def _mma_media_rows_fake(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output: torch.Tensor, layer_name: str
) -> None:
    return None


direct_register_custom_op(
    op_name="mma_media_rows",
    op_func=mma_media_rows,
    mutates_args=["output"],
    fake_impl=_mma_media_rows_fake,
    target_lib=_LIBRARY,
)
