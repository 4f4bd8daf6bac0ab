"""Which rows MMA changes in one vLLM forward step, from the step's token ids alone (pure torch, no vLLM).

vLLM hands a model one flat sequence of tokens per step: the scheduled tokens of every request, one after
another (``query_start_loc``), each request ``seq_lens`` long so far. A request whose step starts at its
position 0 (``query_len == seq_len``) is a whole prefill: every key a media row of it may see is in the step.
Its roles are derived with :func:`aki.mma.roles_from_token_ids`, the rule the AKI processor uses, from its
token ids: media tokens, and the chat template's headers (the next response start ends what a media token
sees). The prompt length is never used: a preempted request is recomputed as one prefill of prompt plus
generated tokens, and the generated tokens follow the response start, so they stay RESPONSE.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..mma import mma_layout, roles_from_token_ids

__all__ = ["MmaError", "MmaHeaders", "RequestRows", "media_rows_of_step"]

# Stand-ins for the last token of a multi-token header: no real token id is negative.
_RESPONSE_MARK = -2
_TURN_MARK = -3
_NOT_MEDIA = -4


class MmaError(RuntimeError):
    """A configuration or a batch on which vLLM would not compute Modality-Mutual Attention exactly."""


@dataclass(frozen=True)
class MmaHeaders:
    """The token ids the roles rule reads: media placeholders and the chat template's headers.

    ``response_starts`` are the assistant headers (AKI's ``<|assistant|>``) and ``turn_starts`` the other turn
    headers (``<|user|>``, ``<|system|>``); each header is a sequence of token ids (a single id for a special
    token, several for a header such as LLaVA-1.5's ``ASSISTANT:``). The tokens after a response start, up to
    the next turn start, are RESPONSE; the headers themselves are TEXT.

    Example:
        >>> headers = MmaHeaders.of(9, response_starts=[[8, 3]], turn_starts=[[7, 3]])  # "A :" and "U :"
        >>> headers.roles(torch.tensor([[7, 3, 9, 9, 5, 8, 3, 4, 4, 7, 3, 5]])).tolist()
        [[0, 0, 1, 1, 0, 0, 0, 2, 2, 0, 0, 0]]
    """

    media_ids: tuple[int, ...]
    response_starts: tuple[tuple[int, ...], ...]
    turn_starts: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(
        cls,
        media_ids: int | Sequence[int],
        response_starts: Sequence[int | Sequence[int]],
        turn_starts: Sequence[int | Sequence[int]] = (),
    ) -> MmaHeaders:
        """Headers from ids or id sequences: ``MmaHeaders.of(9, [8], [7])``."""
        media = (media_ids,) if isinstance(media_ids, int) else tuple(media_ids)

        def sequences(headers):
            found = tuple((int(h),) if isinstance(h, int) else tuple(int(t) for t in h) for h in headers)
            if any(not header for header in found):
                raise ValueError(f"an empty header in {list(headers)}: give at least one token id per header")
            return found

        if not media:
            raise ValueError("no media token ids given")
        return cls(tuple(int(m) for m in media), sequences(response_starts), sequences(turn_starts))

    def roles(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Roles ``[B, L]`` of token ids ``[B, L]`` by :func:`aki.mma.roles_from_token_ids`."""
        single = all(len(h) == 1 for h in (*self.response_starts, *self.turn_starts))
        if single:
            return roles_from_token_ids(
                input_ids,
                self.media_ids,
                response_start_ids=[h[0] for h in self.response_starts],
                turn_start_ids=[h[0] for h in self.turn_starts],
            )
        # Headers of several tokens: the answer starts after a response header's last token and ends at a turn
        # header's first one. Mark those tokens with stand-in ids, then apply the one rule.
        marked = input_ids.clone()
        for header in self.response_starts:
            marked[_header_tokens(input_ids, header, last=True)] = _RESPONSE_MARK
        for header in self.turn_starts:
            marked[_header_tokens(input_ids, header, last=False)] = _TURN_MARK
        return roles_from_token_ids(
            marked, self.media_ids, response_start_ids=_RESPONSE_MARK, turn_start_ids=_TURN_MARK
        )


@dataclass(frozen=True)
class RequestRows:
    """The rows MMA changes in one request of a step, and the keys each may see.

    ``rows`` index the step's flat tokens; ``keys_start`` is the request's first token in the step, and its
    keys ``[keys_start, keys_start + mask.shape[1])`` are the prompt span the rows read (``mask`` ``(N, span)``,
    True where row ``i`` may attend to key ``j``: causal, plus the text after it up to the next response).
    """

    rows: torch.Tensor  # (N,) long
    keys_start: int
    mask: torch.Tensor  # (N, span) bool

    @property
    def span(self) -> int:
        return self.mask.shape[1]


def media_rows_of_step(
    input_ids: torch.Tensor,
    query_start_loc: Sequence[int],
    seq_lens: Sequence[int],
    headers: MmaHeaders,
    is_media: torch.Tensor | None = None,
) -> list[RequestRows]:
    """The media rows of every whole prefill in a step (``input_ids`` ``(T,)``, flat over requests).

    ``is_media`` ``(T,)`` (vLLM's ``is_multimodal``) marks the positions that hold media embeddings: a media
    token id elsewhere (a generated one, recomputed after preemption) is then text, not media.
    Decode steps (one token of a request with earlier tokens) stay causal. A step that continues a prefill
    (more than one token, not starting at position 0: chunked prefill, a prefix-cache hit, speculative
    decoding) raises :class:`MmaError`: its media rows would need keys it does not hold.
    """
    found = []
    media_ids = torch.tensor(headers.media_ids, device=input_ids.device)
    if is_media is not None:
        stray = torch.isin(input_ids, media_ids) & ~is_media.to(device=input_ids.device, dtype=torch.bool)
        input_ids = input_ids.masked_fill(stray, _NOT_MEDIA)
    for request, (start, stop) in enumerate(itertools.pairwise(query_start_loc)):
        query_len, seq_len = stop - start, seq_lens[request]
        if query_len == 0 or (query_len == 1 and seq_len > 1):
            continue  # nothing scheduled, or a decode step: causal
        ids = input_ids[start:stop]
        if query_len != seq_len:
            raise MmaError(
                f"MMA: request {request} of this step runs {query_len} tokens from position {seq_len - query_len} "
                "(chunked prefill, prefix caching or speculative decoding); Modality-Mutual Attention needs each "
                "prompt prefilled whole in one step, or media tokens would miss the text after them"
            )
        if not bool(torch.isin(ids, media_ids).any()):
            continue
        layout = mma_layout(headers.roles(ids[None]))
        positions = torch.arange(query_len, device=ids.device)
        end = layout.media_end[0]
        rows = (end > positions + 1).nonzero().flatten()  # media rows with later positions before a response
        if not rows.numel():
            continue
        keys = torch.arange(int(end[rows].max()), device=ids.device)
        ahead = layout.extension_function()(0, 0, rows[:, None], keys[None, :])  # (N, span)
        sees_text = ahead.any(-1)  # only these rows change: the others see later media tokens at most
        if not bool(sees_text.any()):
            continue
        rows, ahead = rows[sees_text], ahead[sees_text]
        keys = keys[: int(end[rows].max())]
        ahead = ahead[:, : keys.numel()]
        found.append(RequestRows(rows=rows + start, keys_start=start, mask=ahead | (keys <= rows[:, None])))
    return found


def _header_tokens(input_ids: torch.Tensor, header: tuple[int, ...], *, last: bool) -> torch.Tensor:
    """Bool ``[B, L]``: True at the last (or first) token of each occurrence of ``header`` in ``input_ids``."""
    length = len(header)
    found = torch.zeros_like(input_ids, dtype=torch.bool)
    if input_ids.shape[1] < length:
        return found
    windows = input_ids.unfold(1, length, 1)  # (B, L - n + 1, n)
    matches = (windows == torch.tensor(header, device=input_ids.device)).all(-1)
    if last:
        found[:, length - 1 :] = matches
    else:
        found[:, : matches.shape[1]] = matches
    return found
