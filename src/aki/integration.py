"""MMA for any Hugging Face model: the one module that touches transformers' attention and generation.

``enable_mma(model)`` switches the text model's attention implementation to an MMA-aware one that
transformers' own registries know (``AttentionInterface`` for the attention call,
``AttentionMaskInterface`` for the mask), and lets ``model.forward`` / ``model.generate`` take
``mma_roles``. During a forward with roles, the per-token :class:`aki.mma.MmaLayout` is held in a context
variable; the registered mask functions OR the MMA extension into the mask function transformers composed
(causal, sliding window), before transformers intersects padding. Nothing else changes: without roles
(or without media) every call goes to transformers' own functions, bit for bit.

Three implementations are registered:

* ``aki_mma_sdpa``: SDPA. Every row is computed with the model's usual causal mask (``is_causal`` when
  there is no padding), then only the media rows are recomputed over the prompt span with a small mask.
  MMA changes only those rows, so this is exact and costs little more than causal attention.
* ``aki_mma_eager``: the model's own eager attention with the additive MMA mask.
* ``aki_mma_flex`` / ``aki_mma_flex_compiled``: FlexAttention with a ``BlockMask`` built from block
  summaries of the layout (no ``L x L`` tensor). FlexAttention has no backward on CPU.

Flash-attention kernels cannot take an arbitrary mask, so MMA refuses them (at enable time, and at the
next forward if the implementation is switched later).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface, LlamaModel, PreTrainedModel
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import (
    AttentionMaskInterface,
    add_offsets_to_mask_function,
    and_masks,
    causal_mask_function,
    eager_mask,
    flex_attention_mask,
    or_masks,
    padding_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from .mma import MmaLayout, Role, mma_layout, roles_from_labels

__all__ = [
    "CACHE_KWARG",
    "MMA_IMPLEMENTATIONS",
    "disable_mma",
    "enable_mma",
    "is_mma_enabled",
    "mma_context",
]

_LAYOUT: contextvars.ContextVar[MmaLayout | None] = contextvars.ContextVar("aki_mma_layout", default=None)

# Our registered implementation for each plain one, and back.
MMA_IMPLEMENTATIONS = {
    "sdpa": "aki_mma_sdpa",
    "eager": "aki_mma_eager",
    "flex_attention": "aki_mma_flex",
    "flex_attention_compiled": "aki_mma_flex_compiled",
}
_PLAIN_IMPLEMENTATIONS = {mma: plain for plain, mma in MMA_IMPLEMENTATIONS.items()} | {
    "aki_mma_flex_compiled": "flex_attention"
}
# Up to this many keys, aki_mma_sdpa gives SDPA one dense MMA mask (cheaper there); above it, causal SDPA plus
# the media-row patch (docs/design.md).
SDPA_DENSE_MASK_MAX_KEYS = 512
# The keyword under which transformers' models take and return the KV cache: `cache` from 5.24 (where
# `past_key_values` is deprecated), `past_key_values` before. aki passes it under this name and reads both.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
# Config attributes under which Hugging Face models name their media placeholder tokens.
_MEDIA_TOKEN_ATTRIBUTES = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "audio_token_id",
    "audio_token_index",
    "media_token_id",
)


@contextmanager
def mma_context(layout: MmaLayout | None) -> Iterator[None]:
    """Make ``layout`` the MMA layout of the forwards run inside the block (None: plain causal)."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


# --------------------------------------------------------------------------------------------------
# Masks: what the registered mask interfaces return
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRowPatch:
    """The causal mask for every row, plus a small mask for the media rows that MMA changes.

    ``base`` is what ``sdpa_mask`` gives for the causal pattern (None means ``is_causal``). The media rows
    are grouped per batch row into ``slots`` so one SDPA call recomputes them all over keys ``[0, span)``.
    """

    base: torch.Tensor | None
    slot_query: torch.Tensor  # (B, M) local query index of each slot (0 for unused slots)
    slot_mask: torch.Tensor  # (B, 1, M, span) bool, allowed keys of each slot
    row_batch: torch.Tensor  # (N,) batch index of each media row
    row_query: torch.Tensor  # (N,) local query index of each media row
    row_slot: torch.Tensor  # (N,) slot of each media row

    @property
    def span(self) -> int:
        return self.slot_mask.shape[-1]


def _media_rows(layout: MmaLayout, q_offset: int, q_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, absolute query) indices of the rows in ``[q_offset, q_offset + q_length)`` that MMA changes."""
    stop = min(q_offset + q_length, layout.length)
    if stop <= q_offset:
        empty = torch.empty(0, dtype=torch.long, device=layout.valid.device)
        return empty, empty
    end = layout.media_end[:, q_offset:stop]
    positions = torch.arange(q_offset, stop, device=end.device)
    rows_b, rows_q = (end > positions + 1).nonzero(as_tuple=True)
    return rows_b, rows_q + q_offset


def _layout_rows(q_offset: Any, q_length: int):
    """The active layout and its changed rows for this query range, or None when MMA changes nothing."""
    layout = _LAYOUT.get()
    if layout is None:
        return None
    rows_b, rows_q = _media_rows(layout, int(q_offset), q_length)
    return (layout, rows_b, rows_q) if rows_b.numel() else None


def _with_padding(mask_function, attention_mask, kv_length: int, kv_offset: int):
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    return mask_function if padding is None else and_masks(mask_function, padding_mask_function(padding))


def _mma_sdpa_mask(*, batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, **kwargs):
    """sdpa mask interface: the plain mask, plus a :class:`MediaRowPatch` when MMA changes some rows."""
    mask_function = mask_function or causal_mask_function
    plain = functools.partial(
        sdpa_mask,
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        **kwargs,
    )
    found = _layout_rows(q_offset, q_length)
    if found is None:
        return plain(mask_function=mask_function)
    layout, rows_b, rows_q = found
    full_function = or_masks(mask_function, layout.extension_function())
    if kwargs.get("use_vmap", False) or kv_length <= SDPA_DENSE_MASK_MAX_KEYS:
        # Short sequences: one dense mask costs less than the second, small SDPA call of the patch. And a
        # model that composed its own mask functions may need vmap: build the whole mask densely.
        return plain(mask_function=full_function, allow_is_causal_skip=False)

    q_offset, kv_offset = int(q_offset), int(kv_offset)
    # Keys a media row may reach: up to its next response (exclusive), in local key coordinates.
    reach = int(layout.media_end[rows_b, rows_q].max()) - kv_offset
    span = max(1, min(kv_length, reach))
    keys = torch.arange(span, device=rows_b.device) + kv_offset
    allowed_function = _with_padding(full_function, kwargs.get("attention_mask"), kv_length, kv_offset)
    row_mask = allowed_function(
        rows_b[:, None], torch.zeros_like(rows_b)[:, None], rows_q[:, None], keys[None, :]
    )
    row_mask = row_mask.expand(rows_b.numel(), span)

    # Group the rows per batch row into slots, so one batched SDPA call serves them all.
    counts = torch.bincount(rows_b, minlength=batch_size)
    slots = int(counts.max())
    first_of_batch = torch.cumsum(counts, 0) - counts
    row_slot = torch.arange(rows_b.numel(), device=rows_b.device) - first_of_batch[rows_b]
    slot_query = torch.zeros(batch_size, slots, dtype=torch.long, device=rows_b.device)
    slot_query[rows_b, row_slot] = rows_q - q_offset
    slot_mask = torch.ones(batch_size, 1, slots, span, dtype=torch.bool, device=rows_b.device)
    slot_mask[rows_b, 0, row_slot] = row_mask
    return MediaRowPatch(
        base=plain(mask_function=mask_function),
        slot_query=slot_query,
        slot_mask=slot_mask,
        row_batch=rows_b,
        row_query=rows_q - q_offset,
        row_slot=row_slot,
    )


def _mma_eager_mask(*, q_offset=0, q_length, mask_function=None, **kwargs):
    """eager mask interface: the additive mask with the MMA extension ORed in before padding."""
    mask_function = mask_function or causal_mask_function
    found = _layout_rows(q_offset, q_length)
    if found is not None:
        mask_function = or_masks(mask_function, found[0].extension_function())
    return eager_mask(q_offset=q_offset, q_length=q_length, mask_function=mask_function, **kwargs)


def _mma_flex_mask(
    *,
    batch_size,
    q_length,
    kv_length,
    q_offset=0,
    kv_offset=0,
    mask_function=None,
    attention_mask=None,
    device="cpu",
    **kwargs,
):
    """flex mask interface: a ``BlockMask`` for the composed mask with the MMA extension ORed in."""
    layout = _LAYOUT.get()
    mask_function = mask_function or causal_mask_function
    if layout is None:
        return flex_attention_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function,
            attention_mask=attention_mask,
            device=device,
            **kwargs,
        )
    q_offset, kv_offset = int(q_offset), int(kv_offset)
    if _media_rows(layout, q_offset, q_length)[0].numel():
        mask_function = or_masks(mask_function, layout.extension_function())
    mask_function = _with_padding(mask_function, attention_mask, kv_length, kv_offset)
    if q_offset == 0 and kv_offset == 0 and q_length == kv_length == layout.length:
        # Prefill: block sparsity from the layout's block summaries, no L x L tensor. Other overlays
        # (sliding window) may remove pairs inside kept blocks, so every kept block is evaluated.
        return layout.block_mask(
            block_size=_flex_block_size(kv_length), mask_mod=mask_function, full_blocks=False
        )
    return create_block_mask(
        add_offsets_to_mask_function(mask_function, q_offset, kv_offset),
        B=batch_size,
        H=None,
        Q_LEN=q_length,
        KV_LEN=kv_length,
        device=device,
        _compile=False,
    )


def _flex_block_size(length: int) -> int:
    return 128 if length >= 128 else max(16, 1 << (length - 1).bit_length())


# --------------------------------------------------------------------------------------------------
# Attention functions
# --------------------------------------------------------------------------------------------------


def _mma_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for every row with the causal mask, then the media rows again over the prompt span."""
    if not isinstance(attention_mask, MediaRowPatch):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    patch = attention_mask
    output, _ = sdpa_attention_forward(
        module, query, key, value, patch.base, dropout=dropout, scaling=scaling, **kwargs
    )  # (B, Lq, H, D)
    batch, heads, _, head_dim = query.shape
    slot_queries = query.gather(2, patch.slot_query[:, None, :, None].expand(batch, heads, -1, head_dim))
    groups = heads // key.shape[1]
    span_keys = repeat_kv(key[:, :, : patch.span], groups)  # (B, H, span, D)
    span_values = repeat_kv(value[:, :, : patch.span], groups)
    slot_output = torch.nn.functional.scaled_dot_product_attention(
        slot_queries,
        span_keys,
        span_values,
        attn_mask=patch.slot_mask,
        dropout_p=dropout,
        scale=scaling,
    ).transpose(1, 2)  # (B, M, H, Dv)
    rows = slot_output[patch.row_batch, patch.row_slot].to(output.dtype)
    return output.index_put((patch.row_batch, patch.row_query), rows), None


def _mma_eager_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention (softcapping, sinks, ...) with the additive MMA mask."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return (eager or _eager_attention)(module, query, key, value, attention_mask, **kwargs)


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Lq, Lk)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@functools.cache
def _compiled_flex_attention():
    # One graph per shape: per-token mask tensors and automatic dynamic shapes do not mix (docs/design.md).
    return torch.compile(flex_attention, dynamic=False)


def _mma_flex_attention(module, query, key, value, attention_mask, scaling=None, compiled=False, **kwargs):
    if _LAYOUT.get() is None or not isinstance(attention_mask, BlockMask):
        return flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if kwargs.get("dropout", 0.0) > 0:
        raise ValueError(
            "FlexAttention does not support attention dropout: use model.eval() or sdpa for training"
        )
    softcap = kwargs.get("softcap")

    def score_mod(score, batch_idx, head_idx, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    attend = _compiled_flex_attention() if compiled else flex_attention
    output = attend(
        query,
        key,
        value,
        score_mod=score_mod if softcap is not None else None,
        block_mask=attention_mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    attention = {
        "aki_mma_sdpa": _mma_sdpa_attention,
        "aki_mma_eager": _mma_eager_attention,
        "aki_mma_flex": _mma_flex_attention,
        "aki_mma_flex_compiled": functools.partial(_mma_flex_attention, compiled=True),
    }
    masks = {
        "aki_mma_sdpa": _mma_sdpa_mask,
        "aki_mma_eager": _mma_eager_mask,
        "aki_mma_flex": _mma_flex_mask,
        "aki_mma_flex_compiled": _mma_flex_mask,
    }
    for name, function in attention.items():
        AttentionInterface.register(name, function)
    for name, function in masks.items():
        AttentionMaskInterface.register(name, function)


_register()


# --------------------------------------------------------------------------------------------------
# Turning MMA on and off for a model
# --------------------------------------------------------------------------------------------------


def _text_config(model: PreTrainedModel):
    return model.config.get_text_config(decoder=True)


def _mma_implementation(name: str | None) -> str:
    name = name or "sdpa"
    if name in _PLAIN_IMPLEMENTATIONS:
        return name
    if "flash" in name:
        raise ValueError(
            f"MMA cannot run on attention implementation {name!r}: flash-attention kernels ignore custom "
            "masks, so media tokens would silently stay causal. Use 'sdpa' (fast path), 'eager' or "
            "'flex_attention'."
        )
    if name not in MMA_IMPLEMENTATIONS:
        raise ValueError(
            f"MMA does not know attention implementation {name!r}; supported: {sorted(MMA_IMPLEMENTATIONS)}"
        )
    return MMA_IMPLEMENTATIONS[name]


class _MmaModel:
    """Mixin of the per-class subclass that ``enable_mma`` gives a model: ``forward`` takes ``mma_roles``."""

    def _mma_layout(self, args, kwargs, mma_roles) -> MmaLayout | None:
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None and attention_mask.dim() != 2:
            attention_mask = None  # a prepared 4D mask is used as given
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if mma_roles is None:
            media_ids = _media_token_ids(self.config)
            if input_ids is None or not media_ids:
                return None
            mma_roles = roles_from_labels(input_ids, media_ids, kwargs.get("labels"))
            if not bool((mma_roles == Role.MEDIA).any()):
                return None
        mma_roles = torch.as_tensor(
            mma_roles, device=(input_ids if input_ids is not None else mma_roles).device
        )
        batch = _batch_size(input_ids, kwargs)
        if batch is not None and mma_roles.dim() == 2 and mma_roles.shape[0] != batch:
            raise ValueError(
                f"mma_roles has batch size {mma_roles.shape[0]} (shape {tuple(mma_roles.shape)}) but the "
                f"inputs have batch size {batch}"
            )
        length = _sequence_length(input_ids, kwargs)
        too_long = length is not None and mma_roles.dim() == 2 and mma_roles.shape[1] > length
        if too_long and attention_mask is None:  # with a 2D attention mask, mma_layout checks the length
            raise ValueError(
                f"mma_roles of shape {tuple(mma_roles.shape)} do not fit a sequence of {length} positions "
                "(cached and new): roles cannot run past the input"
            )
        return mma_layout(mma_roles, attention_mask, sequence_starts=_packed_starts(mma_roles, kwargs))

    def _check_mma_implementation(self) -> None:
        config = _text_config(self)
        current = config._attn_implementation
        if current not in _PLAIN_IMPLEMENTATIONS:
            # Switched after enable_mma (e.g. set_attn_implementation): follow it, or refuse flash.
            config._attn_implementation = _mma_implementation(current)


def _batch_size(input_ids, kwargs) -> int | None:
    if input_ids is not None:
        return input_ids.shape[0]
    embeds = kwargs.get("inputs_embeds")
    return embeds.shape[0] if embeds is not None else None


def _sequence_length(input_ids, kwargs) -> int | None:
    """Positions the forward attends over: cached ones plus the new input (None when unknown)."""
    tokens = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
    if tokens is None:
        return None
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return tokens.shape[1] + (cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0)


def _packed_starts(roles: torch.Tensor, kwargs) -> torch.Tensor | None:
    """Where packed sequences begin (position ids restart), in the case transformers separates them.

    transformers treats a row as packed when position ids are given without an attention mask or a cache;
    media must not see into the next sequence either.
    """
    position_ids = kwargs.get("position_ids")
    if (
        kwargs.get("attention_mask") is not None
        or kwargs.get("cache", kwargs.get("past_key_values")) is not None
    ):
        return None
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != roles.shape[-1]:
        return None
    position_ids = position_ids.expand(roles.shape[0], -1).to(roles.device)
    restart = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return torch.nn.functional.pad(restart, (1, 0), value=False)


def _media_token_ids(config) -> list[int]:
    ids = []
    for source in (config, getattr(config, "text_config", None)):
        for attribute in _MEDIA_TOKEN_ATTRIBUTES:
            value = getattr(source, attribute, None) if source is not None else None
            if isinstance(value, int) and value >= 0 and value not in ids:
                ids.append(value)
    return ids


@functools.cache
def _mma_class(base: type) -> type:
    """A subclass of ``base`` (same name) whose ``forward`` also takes ``mma_roles``."""
    base_forward = base.forward

    def forward(self, *args, mma_roles: torch.Tensor | None = None, **kwargs):
        self._check_mma_implementation()
        layout = self._mma_layout(args, kwargs, mma_roles)
        with mma_context(layout):
            return base_forward(self, *args, **kwargs)

    # generate() accepts only the kwargs that forward's signature names: name every original one too.
    signature = inspect.signature(base_forward)
    parameters = list(signature.parameters.values())
    roles_parameter = inspect.Parameter(
        "mma_roles", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=torch.Tensor | None
    )
    at = next(
        (i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters)
    )
    forward.__signature__ = signature.replace(
        parameters=[*parameters[:at], roles_parameter, *parameters[at:]]
    )
    forward.__doc__ = base_forward.__doc__
    namespace = {"forward": forward, "__module__": base.__module__, "_aki_base_class": base}
    if hasattr(base, "generate"):
        base_generate = base.generate

        @functools.wraps(base_generate)
        def generate(self, inputs=None, *args, mma_roles: torch.Tensor | None = None, **kwargs):
            # Derive a VLM's roles from the prompt once, so every generated position is RESPONSE, also
            # when decoding without a cache runs the grown sequence again.
            input_ids = inputs if isinstance(inputs, torch.Tensor) else kwargs.get("input_ids")
            media_ids = _media_token_ids(self.config)
            if mma_roles is None and input_ids is not None and media_ids:
                derived = roles_from_labels(input_ids, media_ids)
                mma_roles = derived if bool((derived == Role.MEDIA).any()) else None
            if mma_roles is not None:
                kwargs["mma_roles"] = mma_roles
            return base_generate(self, inputs, *args, **kwargs)

        namespace["generate"] = generate
    return type(base.__name__, (_MmaModel, base), namespace)


def enable_mma(model: PreTrainedModel, *, attn_implementation: str | None = None) -> PreTrainedModel:
    """Turn Modality-Mutual Attention on, in place, for a Hugging Face model; returns the model.

    After it, ``model(..., mma_roles=roles)`` and ``model.generate(..., mma_roles=roles)`` apply MMA
    (``roles`` ``[B, L]`` of :class:`aki.mma.Role`; generated positions are RESPONSE). On a model whose
    config names a media token (``image_token_id``, ...), roles are derived from ``input_ids`` (and
    ``labels``) when omitted. The attention implementation of the text model is kept (sdpa, eager,
    flex_attention) unless ``attn_implementation`` names another; flash-attention raises ``ValueError``.

    Example:
        >>> model = enable_mma(AutoModelForCausalLM.from_pretrained(path))   # doctest: +SKIP
        >>> model(input_ids, attention_mask=mask, mma_roles=roles)          # doctest: +SKIP
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"enable_mma expects a transformers PreTrainedModel, got {type(model).__name__}")
    config = _text_config(model)
    config._attn_implementation = _mma_implementation(attn_implementation or config._attn_implementation)
    if not isinstance(model, _MmaModel):
        model.__class__ = _mma_class(type(model))
    return model


def disable_mma(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`enable_mma`: the model's own class and plain attention implementation again."""
    if isinstance(model, _MmaModel):
        config = _text_config(model)
        config._attn_implementation = _PLAIN_IMPLEMENTATIONS.get(
            config._attn_implementation, config._attn_implementation
        )
        model.__class__ = type(model)._aki_base_class
    return model


def is_mma_enabled(model: PreTrainedModel) -> bool:
    """Whether :func:`enable_mma` is in effect on ``model``."""
    return isinstance(model, _MmaModel)
