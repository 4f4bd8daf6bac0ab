"""MMA for the LLaVA-style models vLLM implements: vLLM's own model class, with MMA in its attention.

``mma_model_class(base)`` subclasses one of vLLM's multimodal model classes (same weights, processor and
vision tower); only the language model's attention changes. The architecture is chosen with
``hf_overrides={"architectures": ["MmaLlavaForConditionalGeneration"], ...}`` (the model's own config stays
as it is), and the roles need the chat template's assistant header, given in the same overrides:

* ``mma_response_start``: the assistant header, a token id or a list of ids (``ASSISTANT:`` is several tokens
  in LLaVA-1.5's tokenizer), or a list of such headers;
* ``mma_turn_start`` (optional): the other turn headers (``USER:``), in the same form.

The tokens after a response start, up to the next turn start, are the answer: media tokens never see them.
"""

from __future__ import annotations

import functools
import re

import torch
from vllm.model_executor.models.llava import LlavaForConditionalGeneration
from vllm.model_executor.models.utils import WeightsMapper
from vllm.sequence import IntermediateTensors

from .roles import MmaHeaders
from .runtime import MmaRuntime, required_headers

__all__ = ["MmaLlavaForConditionalGeneration", "llava_headers", "mma_model_class"]

# transformers 5 saves a LLaVA tower as `vision_tower.embeddings.*`; vLLM's towers keep `vision_model.`.
_TRANSFORMERS_5_TOWER = WeightsMapper(
    orig_to_new_regex={
        re.compile(r"^(model\.)?vision_tower\.(?!vision_model\.)"): "vision_tower.vision_model.",
    }
)


def llava_headers(config) -> MmaHeaders:
    """The roles' token ids of a LLaVA-style config: its image token and the overrides' headers."""
    return required_headers(
        config,
        media="image_token_index",
        response="mma_response_start",
        turn="mma_turn_start",
        model=type(config).__name__,
    )


@functools.cache
def mma_model_class(base: type) -> type:
    """A subclass of vLLM's multimodal model class ``base`` that runs its language model with MMA."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        self.mma = MmaRuntime(self.language_model, llava_headers(self.config))

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        self.mma.note_embedding(input_ids, is_multimodal)
        return base.embed_input_ids(self, input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ):
        with self.mma.step(input_ids):
            # The base class received no token ids before: keep its language model's inputs as they were.
            ids = input_ids if inputs_embeds is None else None
            return base.forward(self, ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    return type(
        f"Mma{base.__name__}",
        (base,),
        {
            "__init__": __init__,
            "embed_input_ids": embed_input_ids,
            "forward": forward,
            "requires_raw_input_tokens": True,  # forward() reads the step's token ids to find the media rows
            "hf_to_vllm_mapper": base.hf_to_vllm_mapper | _TRANSFORMERS_5_TOWER,
            "__module__": __name__,
            "__doc__": f"vLLM's {base.__name__} with Modality-Mutual Attention.",
        },
    )


MmaLlavaForConditionalGeneration = mma_model_class(LlavaForConditionalGeneration)
