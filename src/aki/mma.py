"""Modality-Mutual Attention: token roles -> attention masks, in pure torch.

The rule (``docs/mma.md``): a valid query ``q`` may attend to a valid key ``k`` iff ``k <= q``
(causal), or ``q`` is MEDIA, ``k`` is TEXT, ``k > q`` and no RESPONSE position lies in ``(q, k]``.
Media tokens therefore also see the prompt text after them, up to the next response.

Everything here is derived from O(B * L) per-token metadata (:class:`MmaLayout`): whether a key is a
valid TEXT token, and for every media query the index of the next RESPONSE. The same layout serves
every backend: a mask function ``(b, h, q, k) -> bool`` (FlexAttention's ``create_block_mask`` and
transformers' mask interfaces), a dense boolean mask, the additive float mask eager attention needs,
and a FlexAttention ``BlockMask`` built without ever materialising an ``L x L`` tensor.

This module imports nothing from Hugging Face.

Example:
    >>> roles = parse_layout("T M M T T R R")
    >>> mma_mask(roles)[0, 0].int()  # row 1 (first media token) sees the two TEXT tokens after it
    tensor([[1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import torch

__all__ = [
    "MaskFunction",
    "MmaLayout",
    "Role",
    "mma_additive_mask",
    "mma_block_mask",
    "mma_layout",
    "mma_mask",
    "mma_mask_function",
    "parse_layout",
    "roles_from_assistant_mask",
    "roles_from_labels",
    "roles_from_token_ids",
    "validate_roles",
]

IGNORE_INDEX = -100

MaskFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Role(IntEnum):
    """What a token position is: prompt text, a media embedding, or text the model answers with."""

    TEXT = 0
    MEDIA = 1
    RESPONSE = 2


_LETTERS = {"T": Role.TEXT, "M": Role.MEDIA, "R": Role.RESPONSE}


def parse_layout(layout: str | Iterable[str]) -> torch.Tensor:
    """Roles ``[1, L]`` from a compact layout such as ``"T M M T R"`` (also ``"TMMTR"``).

    Letters: T = TEXT, M = MEDIA, R = RESPONSE. Spaces are ignored.
    """
    letters = [c for c in (layout if isinstance(layout, str) else "".join(layout)) if not c.isspace()]
    unknown = sorted({c for c in letters if c.upper() not in _LETTERS})
    if unknown:
        raise ValueError(f"unknown role letters {unknown} in layout {layout!r}: use T, M and R")
    if not letters:
        raise ValueError("empty layout: give at least one of T, M, R")
    return torch.tensor([[_LETTERS[c.upper()] for c in letters]], dtype=torch.long)


def validate_roles(roles: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Check that ``roles`` is an integer ``[B, L]`` tensor of known role values; return it as long.

    ``attention_mask``, when given, must be ``[B, L']`` with the same batch size and ``L' >= L`` (roles may
    stop before the end of the sequence: generated positions after them are RESPONSE).
    """
    if not isinstance(roles, torch.Tensor):
        raise TypeError(f"roles must be a torch.Tensor of shape [batch, length], got {type(roles).__name__}")
    if roles.dtype == torch.bool or roles.is_floating_point() or roles.is_complex():
        raise TypeError(f"roles must be an integer tensor (Role values 0/1/2), got dtype {roles.dtype}")
    if roles.dim() != 2:
        raise ValueError(f"roles must have shape [batch, length], got shape {tuple(roles.shape)}")
    if roles.numel() and (int(roles.min()) < min(Role) or int(roles.max()) > max(Role)):
        bad = sorted(set(roles.unique().tolist()) - {int(r) for r in Role})
        raise ValueError(f"unknown role values {bad}: roles must be 0 (TEXT), 1 (MEDIA) or 2 (RESPONSE)")
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must have shape [batch, length], got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[0] != roles.shape[0] or attention_mask.shape[1] < roles.shape[1]:
            raise ValueError(
                f"roles of shape {tuple(roles.shape)} do not fit attention_mask of shape "
                f"{tuple(attention_mask.shape)}: same batch size and no more positions expected"
            )
    return roles.long()


@dataclass(frozen=True)
class MmaLayout:
    """Per-token metadata from which every form of the MMA mask is computed (all ``[B, L]``).

    Attributes:
        valid: the position is a real token (``attention_mask == 1``).
        key_is_text: the position is a valid TEXT token, i.e. a key that media may see ahead of them.
        media_end: for a valid MEDIA query, the index of the first RESPONSE after it (``L`` if none:
            positions past the given roles are RESPONSE); 0 for every other query. A media query ``q``
            may see TEXT keys ``k`` with ``q < k < media_end[q]``.
    """

    valid: torch.Tensor
    key_is_text: torch.Tensor
    media_end: torch.Tensor

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def has_media(self) -> bool:
        return bool((self.media_end > 0).any())

    def extension_function(self) -> MaskFunction:
        """The part MMA adds to causal attention: media query -> later text of the same prompt.

        Usable with index tensors that broadcast (``b [B,1,1,1]``, ``q [1,1,Q,1]``, ``k [1,1,1,K]``) and
        under ``torch.vmap`` (FlexAttention). Positions at or past ``length`` are RESPONSE: never extended.
        """
        last = self.length - 1
        key_is_text, media_end = self.key_is_text, self.media_end

        def mma_extension(b, h, q, k):
            q_in, k_in = q.clamp(max=last), k.clamp(max=last)
            end = torch.where(q <= last, media_end[b, q_in], 0)
            return (k > q) & (k < end) & (k <= last) & key_is_text[b, k_in]

        return mma_extension

    def mask_function(self) -> MaskFunction:
        """The whole rule: ``valid[k] and (k <= q or extension(q, k))``; padded query rows stay causal."""
        last = self.length - 1
        valid, extension = self.valid, self.extension_function()

        def mma_mask_mod(b, h, q, k):
            key_ok = (k > last) | valid[b, k.clamp(max=last)]  # generated keys past the roles are real
            padded_query = (q <= last) & ~valid[b, q.clamp(max=last)]
            return ((k <= q) | extension(b, h, q, k)) & (key_ok | padded_query)

        return mma_mask_mod

    def dense(self) -> torch.Tensor:
        """The boolean mask ``[B, 1, L, L]``, True where attention is allowed."""
        batch, length = self.valid.shape
        device = self.valid.device
        mask = torch.ones(batch, 1, length, length, dtype=torch.bool, device=device).tril_()
        if not bool(self.valid.all()):
            # Padded query rows keep the plain causal pattern, so every row has a key and stays finite.
            mask &= self.valid[:, None, None, :] | ~self.valid[:, None, :, None]
        # MMA changes only the media rows, and only before the furthest next response: O(media x span).
        rows_b, rows_q = (self.media_end > 0).nonzero(as_tuple=True)
        if rows_b.numel():
            ends = self.media_end[rows_b, rows_q]  # (N,)
            span = int(ends.max())
            keys = torch.arange(span, device=device)
            ahead = (keys > rows_q[:, None]) & (keys < ends[:, None]) & self.key_is_text[rows_b, :span]
            mask[rows_b, 0, rows_q, :span] |= ahead  # (N, span)
        return mask

    def block_mask(
        self, *, block_size: int = 128, mask_mod: MaskFunction | None = None, full_blocks: bool = True
    ):
        """A FlexAttention ``BlockMask`` built from block summaries of the layout: no ``L x L`` tensor.

        A block ``(i, j)`` is kept when it can hold an allowed pair: causal blocks with a valid key, and blocks
        ahead of the diagonal that a media query of block ``i`` reaches with a text key in block ``j``. With
        ``full_blocks``, blocks strictly below the diagonal whose keys are all valid skip ``mask_mod``; pass
        ``full_blocks=False`` when ``mask_mod`` restricts more than this rule (a sliding window).
        """
        from torch.nn.attention.flex_attention import BlockMask

        batch, length = self.valid.shape
        device = self.valid.device
        blocks = -(-length // block_size)
        block_index = torch.arange(blocks, device=device)
        any_valid = _block_any(self.valid, block_size, blocks)  # (B, nK)
        any_text = _block_any(self.key_is_text, block_size, blocks)  # (B, nK)
        all_valid = ~_block_any(~self.valid, block_size, blocks) & (block_index < length // block_size)
        # Furthest key (exclusive) a media query of each q-block may reach; 0 when the block has no media.
        padded_end = torch.nn.functional.pad(self.media_end, (0, blocks * block_size - length))
        reach = padded_end.view(batch, blocks, block_size).amax(-1)  # (B, nQ)

        q_block, k_block = block_index[:, None], block_index[None, :]
        causal_part = (k_block <= q_block) & any_valid[:, None, :]
        ahead_part = (k_block > q_block) & any_text[:, None, :] & (k_block * block_size < reach[:, :, None])
        full = (k_block < q_block) & all_valid[:, None, :] if full_blocks else torch.zeros_like(causal_part)
        partial = (causal_part | ahead_part) & ~full

        def to_indices(kept: torch.Tensor):
            counts = kept.sum(-1, dtype=torch.int32)[:, None]  # (B, 1, nQ)
            order = kept.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
            return counts, order  # (B, 1, nQ), (B, 1, nQ, nK)

        kv_num_blocks, kv_indices = to_indices(partial)
        full_kv_num_blocks, full_kv_indices = to_indices(full)
        return BlockMask.from_kv_blocks(
            kv_num_blocks,
            kv_indices,
            full_kv_num_blocks,
            full_kv_indices,
            BLOCK_SIZE=block_size,
            mask_mod=mask_mod if mask_mod is not None else self.mask_function(),
            seq_lengths=(length, length),
        )


def mma_layout(
    roles: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    sequence_starts: torch.Tensor | None = None,
) -> MmaLayout:
    """Compute the per-token metadata of the MMA rule, vectorised over batch and positions.

    Args:
        roles: ``[B, L]`` integer tensor of :class:`Role` values.
        attention_mask: ``[B, L]`` (or longer) 0/1 padding mask; None means every position is valid.
        sequence_starts: ``[B, L]`` bool, True where a packed sequence begins. Media never see across
            such a start (the causal part across packed sequences is the caller's to separate).
    """
    roles = validate_roles(roles, attention_mask)
    batch, length = roles.shape
    if attention_mask is None:
        valid = torch.ones_like(roles, dtype=torch.bool)
    else:
        valid = attention_mask[:, :length].to(device=roles.device, dtype=torch.bool)
    positions = torch.arange(length, device=roles.device).expand(batch, length)
    # Index of the first stop (a valid RESPONSE, or the start of the next packed sequence) at or after each
    # position, L when none: a reverse cumulative min.
    stops = valid & (roles == Role.RESPONSE)
    if sequence_starts is not None:
        if sequence_starts.shape != roles.shape:
            raise ValueError(
                f"sequence_starts of shape {tuple(sequence_starts.shape)} do not match roles of shape "
                f"{tuple(roles.shape)}"
            )
        stops = stops | sequence_starts.to(device=roles.device, dtype=torch.bool)
    response_at = torch.where(stops, positions, length)
    first_response_from = response_at.flip(1).cummin(1).values.flip(1)
    next_response_after = torch.cat(
        [first_response_from[:, 1:], first_response_from.new_full((batch, 1), length)], 1
    )
    is_media = valid & (roles == Role.MEDIA)
    return MmaLayout(
        valid=valid,
        key_is_text=valid & (roles == Role.TEXT),
        media_end=torch.where(is_media, next_response_after, 0),
    )


def mma_mask(roles: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The MMA mask as a boolean ``[B, 1, L, L]`` tensor, True where attention is allowed.

    Rows of padded queries keep the plain causal pattern (the spec leaves them free; this keeps them finite).
    """
    return mma_layout(roles, attention_mask).dense()


def mma_additive_mask(
    roles: torch.Tensor, attention_mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The MMA mask in the additive form eager attention adds to its scores: 0 allowed, dtype-min not."""
    allowed = mma_mask(roles, attention_mask)
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def mma_mask_function(roles: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MaskFunction:
    """The MMA rule as a mask function ``(batch, head, q_idx, kv_idx) -> bool``.

    Suitable for ``torch.nn.attention.flex_attention.create_block_mask`` and for broadcasting index tensors.
    """
    return mma_layout(roles, attention_mask).mask_function()


def mma_block_mask(
    roles: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    block_size: int = 128,
    mask_mod: MaskFunction | None = None,
):
    """A FlexAttention ``BlockMask`` for the MMA rule; see :meth:`MmaLayout.block_mask`."""
    return mma_layout(roles, attention_mask).block_mask(block_size=block_size, mask_mod=mask_mod)


def _block_any(flags: torch.Tensor, block_size: int, blocks: int) -> torch.Tensor:
    """``[B, L]`` bool -> ``[B, blocks]``: does any position of the block hold the flag."""
    padded = torch.nn.functional.pad(flags, (0, blocks * block_size - flags.shape[1]))
    return padded.view(flags.shape[0], blocks, block_size).any(-1)


def roles_from_token_ids(
    input_ids: torch.Tensor,
    media_token_ids: int | Iterable[int],
    *,
    response_start_ids: int | Iterable[int] = (),
    turn_start_ids: int | Iterable[int] = (),
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The one rule by which aki derives roles ``[B, L]`` from token ids (processor, data, model fallback, vLLM).

    * MEDIA where ``input_ids`` holds a media token.
    * With ``response_start_ids`` (a chat template's assistant header, AKI's ``<|assistant|>``): the tokens
      after a response start, up to the next ``turn_start_ids`` token (``<|user|>``, ``<|system|>``), are
      RESPONSE; the headers themselves and the rest are TEXT. A row without any response start is a
      pre-training caption: all its non-media tokens are RESPONSE (MMA then equals causal, no caption leaks).
    * Without ``response_start_ids``, non-media tokens are TEXT: a prompt whose continuation is generated.
    * ``labels`` (aligned with ``input_ids``): a labelled position is RESPONSE; a label on media raises.
    * Padding (``attention_mask == 0``) is TEXT, the fill every aki padder uses.

    Example:
        >>> ids = torch.tensor([[1, 7, 9, 9, 5, 8, 4, 2]])  # 7 user header, 9 image, 8 assistant header
        >>> roles_from_token_ids(ids, 9, response_start_ids=8, turn_start_ids=7).tolist()
        [[0, 0, 1, 1, 0, 0, 2, 2]]
    """
    device = input_ids.device
    media = torch.isin(input_ids, _as_id_tensor(media_token_ids, device))
    roles = torch.where(media, int(Role.MEDIA), int(Role.TEXT))
    opens_ids = _as_id_list(response_start_ids)
    if opens_ids:
        opens = torch.isin(input_ids, torch.tensor(opens_ids, dtype=torch.long, device=device))
        closes_ids = _as_id_list(turn_start_ids)
        closes = (
            torch.isin(input_ids, torch.tensor(closes_ids, dtype=torch.long, device=device))
            if closes_ids
            else torch.zeros_like(opens)
        )
        headers = opens | closes
        positions = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
        # The last header strictly before each position (-1: none): a running max of header indices, shifted.
        last_header = torch.where(headers, positions, -1).cummax(1).values
        before = torch.cat([last_header.new_full((input_ids.shape[0], 1), -1), last_header[:, :-1]], 1)
        in_response = (before >= 0) & opens.gather(1, before.clamp(min=0)) & ~headers & ~media
        caption = ~opens.any(1, keepdim=True) & ~media
        roles = torch.where(in_response | caption, int(Role.RESPONSE), roles)
    if labels is not None:
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match input_ids of shape {tuple(input_ids.shape)}"
            )
        labelled = labels != ignore_index
        if bool((labelled & media).any()):
            raise ValueError("a media token position carries a label: media positions cannot be RESPONSE")
        roles = torch.where(labelled, int(Role.RESPONSE), roles)
    if attention_mask is not None:
        roles = roles.masked_fill(attention_mask[:, : roles.shape[1]].to(device) == 0, int(Role.TEXT))
    return roles.long()


def roles_from_labels(
    input_ids: torch.Tensor,
    media_token_ids: int | Iterable[int],
    labels: torch.Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Roles from what a training batch already has: MEDIA at media tokens, RESPONSE where labelled, TEXT
    elsewhere (:func:`roles_from_token_ids` without a template).

    ``labels`` are aligned with ``input_ids`` (the Hugging Face convention: the model shifts them), so a
    position with ``labels != ignore_index`` is a token the model is trained to produce: RESPONSE.
    """
    return roles_from_token_ids(input_ids, media_token_ids, labels=labels, ignore_index=ignore_index)


def roles_from_assistant_mask(
    input_ids: torch.Tensor,
    assistant_mask: torch.Tensor,
    media_token_ids: int | Iterable[int],
) -> torch.Tensor:
    """Roles from a chat template's assistant-token mask (``return_assistant_tokens_mask=True``).

    Assistant tokens are RESPONSE, media tokens MEDIA, everything else (system, user turns, headers) TEXT.
    """
    assistant_mask = torch.as_tensor(assistant_mask, device=input_ids.device)
    if assistant_mask.shape != input_ids.shape:
        raise ValueError(
            f"assistant mask of shape {tuple(assistant_mask.shape)} does not match input_ids of shape "
            f"{tuple(input_ids.shape)}"
        )
    labels = torch.where(assistant_mask.bool(), input_ids, IGNORE_INDEX)
    return roles_from_token_ids(input_ids, media_token_ids, labels=labels)


def _as_id_list(ids: int | Iterable[int] | None) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def _as_id_tensor(ids: int | Iterable[int], device: torch.device) -> torch.Tensor:
    ids = _as_id_list(ids)
    if not ids:
        raise ValueError("no media token ids given")
    return torch.tensor(ids, dtype=torch.long, device=device)
