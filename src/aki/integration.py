"""MMA for any Hugging Face model: the one module that touches transformers' attention and generation.

``enable_mma(model)`` switches the text model's attention implementation to an MMA-aware one that
transformers' own registries know (``AttentionInterface`` for the attention call,
``AttentionMaskInterface`` for the mask), and lets the model take ``mma_roles``. A forward pre-hook (and the
class's ``forward``, for direct calls) computes the per-token :class:`aki.mma.MmaLayout` of the call and holds
it in a context variable while the model runs; the registered mask functions OR the MMA extension into the
mask function transformers composed (causal, sliding window, packing) before padding is intersected. The hook
runs whatever ``forward`` is in place, so a trainer that replaces it on the instance (TRL's fused LM head) keeps
MMA. Without roles (or without media) every call goes to transformers' own functions, bit for bit.

The implementations (``docs/design.md``):

* ``aki_mma_<kernel>`` for any causal kernel (``sdpa``, ``flash_attention_2`` / ``_3``, a hub kernel, ...): the
  kernel computes every row with its own causal / padding / window handling, then only the media rows are
  recomputed with SDPA over the prompt span with a small mask. MMA changes only those rows, so this is exact on
  top of any kernel that computes causal attention. With ``sdpa`` and at most 512 keys, one dense mask instead.
* ``aki_mma_eager``: the model's own eager attention with the additive MMA mask.
* ``aki_mma_flex`` / ``aki_mma_flex_compiled``: FlexAttention with a ``BlockMask`` built from block summaries of
  the layout (no ``L x L`` tensor). FlexAttention has no backward on CPU.

No path is silently causal: deriving roles without labels while training with gradients raises (the answer
would count as prompt text), ``mma_roles`` given to a model whose MMA was switched off raises, and an
``aki_mma_*`` implementation running on a model on which MMA is not enabled raises.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface, LlamaModel, PreTrainedModel
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    add_offsets_to_mask_function,
    and_masks,
    causal_mask_function,
    eager_mask,
    flex_attention_mask,
    or_masks,
    padding_mask_function,
    prepare_padding_mask,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .mma import MmaLayout, Role, mma_layout, roles_from_token_ids

__all__ = [
    "CACHE_KWARG",
    "MMA_IMPLEMENTATIONS",
    "MediaRowPatch",
    "disable_mma",
    "enable_mma",
    "from_pretrained",
    "is_mma_enabled",
    "media_token_ids",
    "mma_context",
    "mma_implementation",
]

_LAYOUT: contextvars.ContextVar[MmaLayout | None] = contextvars.ContextVar("aki_mma_layout", default=None)
# Which MMA-enabled model the running forward belongs to (id), set by its pre-hook or its forward.
_OWNER: contextvars.ContextVar[int | None] = contextvars.ContextVar("aki_mma_owner", default=None)

# Our registered implementation for each plain one (more are registered on demand: any causal kernel).
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
# What enable_mma records in a model's config, so that a saved model comes back with MMA (from_pretrained).
CONFIG_KEY = "aki_mma"
# The text configs of the models MMA is enabled on: an aki_mma_* implementation running under any other config
# belongs to a model that was never given to enable_mma.
_ENABLED_CONFIGS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> config


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
    """The kernel's own mask for every row, plus a small mask for the media rows that MMA changes.

    ``base`` is what the kernel's mask interface gives for the causal pattern (``sdpa``: None means
    ``is_causal``; flash: the 2D padding mask or None). The media rows are grouped per batch row into ``slots``
    so one SDPA call recomputes them all over keys ``[0, span)``.
    """

    base: Any
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


def _layout_rows(implementation: str, q_offset: Any, q_length: int, config: Any = None):
    """The active layout and its changed rows for this query range, or None when MMA changes nothing.

    Raises when an ``aki_mma_*`` implementation runs on a model that was never given to :func:`enable_mma`
    (loaded with ``attn_implementation="aki_mma_..."``): its roles could never reach attention.
    """
    known = config is None or _ENABLED_CONFIGS.get(id(config)) is config
    if not known and _OWNER.get() is None:
        raise RuntimeError(
            f"attention implementation {implementation!r} is aki's MMA, but MMA is not enabled on this model: "
            "its roles cannot reach attention. Call aki.enable_mma(model) (or load it with aki.from_pretrained)."
        )
    layout = _LAYOUT.get()
    if layout is None:
        return None
    rows_b, rows_q = _media_rows(layout, int(q_offset), q_length)
    return (layout, rows_b, rows_q) if rows_b.numel() else None


def _with_padding(mask_function, attention_mask, kv_length: int, kv_offset: int):
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    return mask_function if padding is None else and_masks(mask_function, padding_mask_function(padding))


def media_row_patch(
    layout: MmaLayout,
    rows_b: torch.Tensor,
    rows_q: torch.Tensor,
    *,
    base: Any,
    batch_size: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
) -> MediaRowPatch:
    """The :class:`MediaRowPatch` of the changed rows ``(rows_b, rows_q)`` (absolute query indices).

    Each row's keys are ``mask_function`` (causal, window, packing) OR the MMA extension, AND padding, over the
    keys a media row may reach (up to its next response).
    """
    full_function = or_masks(mask_function, layout.extension_function())
    reach = int(layout.media_end[rows_b, rows_q].max()) - kv_offset  # local keys, exclusive
    span = max(1, min(kv_length, reach))
    keys = torch.arange(span, device=rows_b.device) + kv_offset
    allowed_function = _with_padding(full_function, attention_mask, kv_length, kv_offset)
    row_mask = allowed_function(
        rows_b[:, None], torch.zeros_like(rows_b)[:, None], rows_q[:, None], keys[None, :]
    )
    row_mask = row_mask.expand(rows_b.numel(), span)  # (N, span)

    # Group the rows per batch row into slots, so one batched SDPA call serves them all.
    counts = torch.bincount(rows_b, minlength=batch_size)
    slots = int(counts.max())
    first_of_batch = torch.cumsum(counts, 0) - counts
    row_slot = torch.arange(rows_b.numel(), device=rows_b.device) - first_of_batch[rows_b]
    slot_query = torch.zeros(batch_size, slots, dtype=torch.long, device=rows_b.device)
    slot_query[rows_b, row_slot] = rows_q - q_offset
    slot_mask = torch.ones(batch_size, 1, slots, span, dtype=torch.bool, device=rows_b.device)
    slot_mask[rows_b, 0, row_slot] = row_mask
    return MediaRowPatch(base, slot_query, slot_mask, rows_b, rows_q - q_offset, row_slot)


def _split_mask(kernel: str) -> Callable:
    """The mask interface of ``aki_mma_<kernel>``: the kernel's own mask, plus a patch for the media rows."""
    implementation = MMA_IMPLEMENTATIONS[kernel]

    @torch.compiler.disable  # data-dependent shapes; runs once per forward, outside the decoder layers
    def split_mask(*, batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, **kwargs):
        mask_function = mask_function or causal_mask_function
        kernel_mask = ALL_MASK_ATTENTION_FUNCTIONS.get(kernel)  # None: the kernel gets no mask (transformers)
        sizes = {"batch_size": batch_size, "q_length": q_length, "kv_length": kv_length}
        plain = functools.partial(kernel_mask, **sizes, q_offset=q_offset, kv_offset=kv_offset, **kwargs)
        found = _layout_rows(implementation, q_offset, q_length, kwargs.get("config"))
        if found is None:
            return None if kernel_mask is None else plain(mask_function=mask_function)
        layout, rows_b, rows_q = found
        if kernel == "sdpa" and (kwargs.get("use_vmap", False) or kv_length <= SDPA_DENSE_MASK_MAX_KEYS):
            # Short sequences: one dense mask costs less than the second, small SDPA call of the patch. And a
            # model that composed its own mask functions may need vmap: build the whole mask densely.
            full_function = or_masks(mask_function, layout.extension_function())
            return plain(mask_function=full_function, allow_is_causal_skip=False)
        return media_row_patch(
            layout,
            rows_b,
            rows_q,
            base=None if kernel_mask is None else plain(mask_function=mask_function),
            batch_size=batch_size,
            kv_length=kv_length,
            q_offset=int(q_offset),
            kv_offset=int(kv_offset),
            mask_function=mask_function,
            attention_mask=kwargs.get("attention_mask"),
        )

    return split_mask


def _mma_eager_mask(*, q_offset=0, q_length, mask_function=None, **kwargs):
    """eager mask interface: the additive mask with the MMA extension ORed in before padding."""
    mask_function = mask_function or causal_mask_function
    found = _layout_rows("aki_mma_eager", q_offset, q_length, kwargs.get("config"))
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
    _layout_rows("aki_mma_flex", q_offset, q_length, kwargs.get("config"))  # refuses a model never enabled
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


def _split_attention(kernel: str) -> Callable:
    """The attention function of ``aki_mma_<kernel>``: the kernel for every row, then the media rows again."""
    kernel_attention = sdpa_attention_forward if kernel == "sdpa" else None

    def split_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        attend = kernel_attention or ALL_ATTENTION_FUNCTIONS[kernel]
        if not isinstance(attention_mask, MediaRowPatch):
            return attend(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise ValueError(
                f"MMA on {kernel!r} recomputes the media rows with SDPA, which cannot apply this model's "
                "attention softcapping / sinks: use attn_implementation='eager' for MMA on this model"
            )
        output, _ = attend(
            module, query, key, value, attention_mask.base, dropout=dropout, scaling=scaling, **kwargs
        )
        return _patch_media_rows(output, query, key, value, attention_mask, dropout, scaling), None

    return split_attention


def _patch_media_rows(output, query, key, value, patch: MediaRowPatch, dropout: float, scaling):
    """``output`` (B, Lq, H, D) with the media rows replaced by SDPA over the prompt span with their mask."""
    batch, heads, _, head_dim = query.shape
    slot_queries = query.gather(2, patch.slot_query[:, None, :, None].expand(batch, heads, -1, head_dim))
    groups = heads // key.shape[1]
    span_keys = repeat_kv(key[:, :, : patch.span], groups)  # (B, H, span, D)
    span_values = repeat_kv(value[:, :, : patch.span], groups)
    slot_output = torch.nn.functional.scaled_dot_product_attention(
        slot_queries, span_keys, span_values, attn_mask=patch.slot_mask, dropout_p=dropout, scale=scaling
    ).transpose(1, 2)  # (B, M, H, Dv)
    rows = slot_output[patch.row_batch, patch.row_slot].to(output.dtype)
    return output.index_put((patch.row_batch, patch.row_query), rows)


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


def _register_split(kernel: str) -> str:
    """Register ``aki_mma_<kernel>`` (the split on top of ``kernel``) with transformers; returns its name."""
    name = MMA_IMPLEMENTATIONS.setdefault(kernel, f"aki_mma_{kernel}")
    _PLAIN_IMPLEMENTATIONS[name] = kernel
    AttentionInterface.register(name, _split_attention(kernel))
    AttentionMaskInterface.register(name, _split_mask(kernel))
    return name


def _register() -> None:
    _register_split("sdpa")
    AttentionInterface.register("aki_mma_eager", _mma_eager_attention)
    AttentionMaskInterface.register("aki_mma_eager", _mma_eager_mask)
    AttentionInterface.register("aki_mma_flex", _mma_flex_attention)
    AttentionInterface.register(
        "aki_mma_flex_compiled", functools.partial(_mma_flex_attention, compiled=True)
    )
    AttentionMaskInterface.register("aki_mma_flex", _mma_flex_mask)
    AttentionMaskInterface.register("aki_mma_flex_compiled", _mma_flex_mask)


_register()


# --------------------------------------------------------------------------------------------------
# Turning MMA on and off for a model
# --------------------------------------------------------------------------------------------------


def _text_config(model: PreTrainedModel):
    return model.config.get_text_config(decoder=True)


def mma_implementation(name: str | None) -> str:
    """The registered MMA implementation for the attention implementation ``name`` (None: sdpa).

    ``eager``, ``sdpa`` and ``flex_attention`` have their own; any other kernel that computes causal attention
    (``flash_attention_2``, ``flash_attention_3``, a hub kernel, a kernel registered with ``AttentionInterface``)
    gets the split on top of it. Paged attention is refused: its cache layout has no prompt span to recompute.
    """
    name = name or "sdpa"
    if name in _PLAIN_IMPLEMENTATIONS:
        return name
    if name in MMA_IMPLEMENTATIONS:
        return MMA_IMPLEMENTATIONS[name]
    if name.startswith("paged"):
        raise ValueError(
            f"MMA cannot run on attention implementation {name!r}: paged attention (continuous batching) keeps "
            "no contiguous prompt keys for the media rows. Use 'sdpa' or a flash kernel."
        )
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        raise ValueError(
            f"MMA does not know attention implementation {name!r}: it is neither built in "
            f"({sorted(MMA_IMPLEMENTATIONS)}) nor registered with transformers' AttentionInterface"
        )
    return _register_split(name)


class _MmaModel:
    """Mixin of the per-class subclass that ``enable_mma`` gives a model: ``forward`` takes ``mma_roles``."""

    def _mma_layout(self, args, kwargs, mma_roles) -> MmaLayout | None:
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None and attention_mask.dim() != 2:
            attention_mask = None  # a prepared 4D mask is used as given
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if mma_roles is None:
            mma_roles = self._derived_roles(input_ids, kwargs.get("labels"), attention_mask)
            if mma_roles is None:
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
        layout = mma_layout(mma_roles, attention_mask, sequence_starts=_packed_starts(mma_roles, kwargs))
        if self.training and layout.has_media() and not bool(layout.key_is_text.any()):
            warnings.warn(
                "MMA equals causal attention on this training batch: it has media but no prompt TEXT token (every "
                "text token is RESPONSE, e.g. a loss on the whole sequence). Label only the answers (-100 on the "
                "prompt) for the media rows to see the question.",
                stacklevel=4,
            )
        return layout

    def _derived_roles(self, input_ids, labels, attention_mask) -> torch.Tensor | None:
        """Roles from the media token ids of the config and ``labels`` (RESPONSE where labelled)."""
        media_ids = media_token_ids(self.config)
        if input_ids is None or not media_ids:
            return None
        roles = roles_from_token_ids(input_ids, media_ids, labels=labels, attention_mask=attention_mask)
        if not bool((roles == Role.MEDIA).any()):
            return None
        if labels is None and self.training and torch.is_grad_enabled():
            raise ValueError(
                "MMA cannot derive the roles of this training batch: neither mma_roles nor labels reached the "
                "model's forward, so the answer would count as prompt text and the media rows would see it. Put "
                "mma_roles in the batch (aki.MmaDataCollator wraps any collator) or pass labels."
            )
        return roles

    def _check_mma_implementation(self) -> None:
        config = _text_config(self)
        current = config._attn_implementation
        if current not in _PLAIN_IMPLEMENTATIONS:
            # Switched after enable_mma (e.g. set_attn_implementation): follow it, or refuse what cannot work.
            config._attn_implementation = mma_implementation(current)

    @torch.compiler.disable  # data-dependent checks; once per forward, before the decoder layers
    def _mma_begin(self, args, kwargs, mma_roles) -> tuple:
        self._check_mma_implementation()
        _ENABLED_CONFIGS[id(_text_config(self))] = _text_config(self)  # also after unpickling
        layout = self._mma_layout(args, kwargs, mma_roles)
        return _LAYOUT.set(layout), _OWNER.set(id(self))

    def __reduce_ex__(self, protocol):
        # The subclass is made at run time and named like its base (so pickle cannot find it): pickle the model as
        # its base class and switch MMA on again when it is loaded (torch.save, deepcopy).
        mma_class = type(self)
        self.__class__ = mma_class._aki_base_class
        try:
            reduced = self.__reduce_ex__(protocol)
        finally:
            self.__class__ = mma_class
        return (_restored_with_mma, reduced[:2], *reduced[2:])


def _restored_with_mma(factory, arguments):
    obj = factory(*arguments)
    obj.__class__ = _mma_class(type(obj))
    return obj


@torch.compiler.disable
def _end(tokens: tuple) -> None:
    layout_token, owner_token = tokens
    _OWNER.reset(owner_token)
    _LAYOUT.reset(layout_token)


def _pre_hook(module, args, kwargs):
    """Before every call of an MMA-enabled model, whatever ``forward`` is in place: take ``mma_roles`` out of the
    call and make its layout the one attention sees. On a model whose MMA was switched off, refuse roles.
    """
    if not isinstance(module, _MmaModel):
        if kwargs.get("mma_roles") is not None:
            raise ValueError(
                "mma_roles were given to a model on which MMA is switched off (disable_mma): they would be "
                "ignored and attention would be causal. Call aki.enable_mma(model), or drop mma_roles."
            )
        kwargs.pop("mma_roles", None)
        return args, kwargs
    mma_roles = kwargs.pop("mma_roles", None)
    module._aki_calls.append(module._mma_begin(args, kwargs, mma_roles))
    return args, kwargs


def _post_hook(module, args, kwargs, output):
    calls = getattr(module, "_aki_calls", None)
    if isinstance(module, _MmaModel) and calls:
        _end(calls.pop())
    return output


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


def media_token_ids(config) -> list[int]:
    """The media placeholder ids a config names (``image_token_id``, ...) and those enable_mma recorded."""
    ids = []
    recorded = getattr(config, CONFIG_KEY, None) or {}
    for value in recorded.get("media_token_ids", []):
        if value not in ids:
            ids.append(value)
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
        if _OWNER.get() == id(self) and mma_roles is None:  # the pre-hook of this call set the layout up
            return base_forward(self, *args, **kwargs)
        tokens = self._mma_begin(args, kwargs, mma_roles)  # a direct .forward() call
        try:
            return base_forward(self, *args, **kwargs)
        finally:
            _end(tokens)

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
            if mma_roles is None and input_ids is not None:
                mask = kwargs.get("attention_mask")
                with torch.no_grad():
                    mma_roles = self._derived_roles(
                        input_ids, None, mask if mask is not None and mask.dim() == 2 else None
                    )
            if mma_roles is not None:
                kwargs["mma_roles"] = mma_roles
            return base_generate(self, inputs, *args, **kwargs)

        namespace["generate"] = generate
    return type(base.__name__, (_MmaModel, base), namespace)


def _unwrap(model: Any) -> Any:
    """The transformers model inside the wrappers training stacks put around it (peft, torch.compile, DDP)."""
    for _ in range(8):
        if isinstance(model, PreTrainedModel):
            return model
        if hasattr(model, "get_base_model"):  # peft's PeftModel
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, DataParallel
            model = model.module
        else:
            break
    return model


def enable_mma(
    model: Any,
    *,
    attn_implementation: str | None = None,
    media_token_ids: list[int] | None = None,
    record: bool = True,
) -> Any:
    """Turn Modality-Mutual Attention on, in place, for a Hugging Face model; returns the model.

    After it, ``model(..., mma_roles=roles)`` and ``model.generate(..., mma_roles=roles)`` apply MMA
    (``roles`` ``[B, L]`` of :class:`aki.mma.Role`; generated positions are RESPONSE). On a model whose config
    names a media token (``image_token_id``, ...) or that is given ``media_token_ids``, roles are derived from
    ``input_ids`` and ``labels`` when omitted. The attention implementation of the text model is kept unless
    ``attn_implementation`` names another: sdpa, eager, flex_attention, or any causal kernel (flash attention,
    hub kernels), under which the media rows are recomputed with SDPA. ``model`` may be wrapped by peft,
    ``torch.compile`` or DDP. With ``record``, the settings go into ``model.config`` (``aki_mma``), so
    :func:`from_pretrained` restores MMA from a saved directory.

    Example:
        >>> model = enable_mma(AutoModelForCausalLM.from_pretrained(path))   # doctest: +SKIP
        >>> model(input_ids, attention_mask=mask, mma_roles=roles)          # doctest: +SKIP
    """
    target = _unwrap(model)
    if not isinstance(target, PreTrainedModel):
        raise TypeError(f"enable_mma expects a transformers PreTrainedModel, got {type(model).__name__}")
    recorded = getattr(target.config, CONFIG_KEY, None) or {}
    config = _text_config(target)
    requested = attn_implementation or recorded.get("attn_implementation") or config._attn_implementation
    config._attn_implementation = mma_implementation(requested)
    _ENABLED_CONFIGS[id(config)] = config
    if not isinstance(target, _MmaModel):
        target.__class__ = _mma_class(type(target))
    if not getattr(target, "_aki_hooked", False):
        target.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        target.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
        target._aki_hooked = True
    target._aki_calls = []
    ids = list(media_token_ids if media_token_ids is not None else recorded.get("media_token_ids", []))
    if record or ids:
        entry = {"attn_implementation": _PLAIN_IMPLEMENTATIONS[config._attn_implementation]}
        setattr(target.config, CONFIG_KEY, {**entry, **({"media_token_ids": ids} if ids else {})})
    return model


def disable_mma(model: Any) -> Any:
    """Undo :func:`enable_mma`: the model's own class and plain attention implementation again. ``mma_roles``
    given to the model afterwards raise (they would be ignored).
    """
    target = _unwrap(model)
    if isinstance(target, _MmaModel):
        config = _text_config(target)
        config._attn_implementation = _PLAIN_IMPLEMENTATIONS.get(
            config._attn_implementation, config._attn_implementation
        )
        target.__class__ = type(target)._aki_base_class
        _ENABLED_CONFIGS.pop(id(config), None)
        if hasattr(target.config, CONFIG_KEY):
            delattr(target.config, CONFIG_KEY)
    return model


def is_mma_enabled(model: Any) -> bool:
    """Whether :func:`enable_mma` is in effect on ``model`` (seen through peft, torch.compile and DDP)."""
    return isinstance(_unwrap(model), _MmaModel)


def from_pretrained(path: str | Path, *, model_class: Any = None, **kwargs: Any) -> Any:
    """Load a saved model and switch MMA on again if it was saved with it (``aki_mma`` in its config).

    ``model_class`` defaults to ``AutoModelForImageTextToText`` for a config with a vision part, else
    ``AutoModelForCausalLM``; ``kwargs`` go to its ``from_pretrained``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from . import models  # noqa: F401  (AKI with the Auto classes)

    if model_class is None:
        config = AutoConfig.from_pretrained(path)
        model_class = (
            AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
        )
    model = model_class.from_pretrained(path, **kwargs)
    if getattr(model.config, CONFIG_KEY, None):
        enable_mma(model, attn_implementation=kwargs.get("attn_implementation"))
    return model
