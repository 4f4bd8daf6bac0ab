"""The MMA part every plugin model shares: its headers, its patched attention layers, one step context."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from .attention import enable_mma_attention, mma_step
from .roles import MmaError, MmaHeaders

__all__ = ["MmaRuntime"]


class MmaRuntime:
    """MMA for one vLLM model: its decoder attention layers recompute media rows during :meth:`step`."""

    def __init__(self, language_model: nn.Module, headers: MmaHeaders | None) -> None:
        self.headers = headers
        self.layer_names = enable_mma_attention(language_model) if headers is not None else []
        self.active = True  # False: the same engine attends causally (what benchmarks compare against)
        self._embedded: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.layer_names) and self.active

    def note_embedding(self, input_ids: torch.Tensor, is_multimodal: torch.Tensor | None) -> None:
        """Remember which positions of the step vLLM fills with media embeddings (``embed_input_ids``)."""
        if self.enabled and is_multimodal is not None:
            self._embedded = (input_ids, is_multimodal)

    def step(self, input_ids: torch.Tensor | None) -> AbstractContextManager:
        """The context of one forward: the step's media rows, found from ``input_ids`` (flat, all requests)."""
        if not self.enabled:
            return nullcontext()
        return mma_step(input_ids, self.headers, self.layer_names[0], self._media_positions(input_ids))

    def _media_positions(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """The media positions noted for this step's tokens (vLLM embeds them just before the forward)."""
        embedded, self._embedded = self._embedded, None
        if embedded is None or input_ids is None:
            return None
        ids, is_multimodal = embedded
        count = ids.shape[0]
        if count > input_ids.shape[0] or not torch.equal(ids, input_ids[:count]):
            return None
        is_media = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=is_multimodal.device)
        is_media[:count] = is_multimodal
        return is_media


def required_headers(config: Any, *, media: str, response: str, turn: str, model: str) -> MmaHeaders:
    """:class:`MmaHeaders` from the HF config attributes named ``media`` / ``response`` / ``turn``.

    A response start is required: without one, a preempted request (recomputed as prompt plus generated tokens)
    would let its media tokens see the generated tokens as prompt text.
    """
    response_starts = getattr(config, response, None)
    if response_starts is None or response_starts == []:
        raise MmaError(
            f"MMA for {model} needs the chat template's assistant header in the model config ({response}): the "
            "tokens after it are the answer, which media tokens never see. Without it a preempted request, "
            "recomputed from its prompt and generated tokens, would let media see generated tokens"
        )
    if isinstance(response_starts, int):
        response_starts = [response_starts]
    turn_starts = getattr(config, turn, None) or []
    return MmaHeaders.of(getattr(config, media), response_starts, turn_starts)
