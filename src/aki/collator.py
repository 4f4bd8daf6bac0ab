"""``mma_roles`` in every training batch, whatever collator builds it.

Trainers do not always pass ``labels`` to the model's forward (HF ``Trainer`` pops them for label smoothing and
for a ``compute_loss_func``; TRL leaves them out of its full-logits forwards), and roles derived without labels
would count the answer as prompt text that the media rows may see. :class:`MmaDataCollator` wraps any collator
and derives the roles once, from the batch it built, with the one rule of :func:`aki.mma.roles_from_token_ids`:
then every forward of the step has them, with labels or without.

Example:
    >>> collator = MmaDataCollator.for_model(DataCollatorForSeq2Seq(tokenizer), model)  # doctest: +SKIP
    >>> Trainer(model=aki.enable_mma(model), data_collator=collator, ...)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .integration import media_token_ids
from .mma import Role, roles_from_token_ids

__all__ = ["MmaDataCollator"]


@dataclass
class MmaDataCollator:
    """Calls ``collator`` and adds ``mma_roles`` ``[B, L]`` to the batch (a batch that has them keeps them).

    Media are the ``media_token_ids`` positions; labelled positions (``labels != -100``) are RESPONSE; with a
    chat template's ``response_start_ids`` (assistant header) and ``turn_start_ids``, answers are RESPONSE by the
    template as well. Padding (``attention_mask == 0``) is TEXT. A batch with media but neither labels nor a
    template cannot tell the answer from the prompt: it raises, naming MMA.
    """

    collator: Callable[[list[Any]], dict[str, Any]]
    media_token_ids: Sequence[int]
    response_start_ids: Sequence[int] = field(default_factory=tuple)
    turn_start_ids: Sequence[int] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.media_token_ids:
            raise ValueError(
                "MmaDataCollator needs the media token ids (MmaDataCollator.for_model reads them)"
            )

    @classmethod
    def for_model(cls, collator: Callable, model: Any, **template: Sequence[int]) -> MmaDataCollator:
        """A collator for ``model``: its media token ids from its config (``image_token_id``, ... or
        :func:`aki.enable_mma`'s ``media_token_ids``); ``template`` = ``response_start_ids``, ``turn_start_ids``.
        """
        ids = media_token_ids(getattr(model, "config", model))
        if not ids:
            raise ValueError(
                f"the config of {type(model).__name__} names no media token (image_token_id, ...): give "
                "MmaDataCollator(collator, media_token_ids=[...]) or enable_mma(model, media_token_ids=[...])"
            )
        return cls(collator, ids, **template)

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collator(features)
        if batch.get("mma_roles") is not None:
            return batch
        input_ids, labels = batch["input_ids"], batch.get("labels")
        roles = roles_from_token_ids(
            torch.as_tensor(input_ids),
            self.media_token_ids,
            response_start_ids=self.response_start_ids,
            turn_start_ids=self.turn_start_ids,
            labels=None if labels is None else torch.as_tensor(labels),
            attention_mask=batch.get("attention_mask"),
        )
        if labels is None and not self.response_start_ids and bool((roles == Role.MEDIA).any()):
            raise ValueError(
                "MMA cannot tell this batch's answers from its prompts: it has media but no labels and no "
                "response_start_ids (the chat template's assistant header)"
            )
        batch["mma_roles"] = roles
        return batch
