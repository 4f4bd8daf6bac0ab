"""AKI on vLLM: vLLM's SigLIP tower -> aki's Perceiver resampler -> any causal LM vLLM implements, with MMA.

Loads a directory written by ``AkiForConditionalGeneration.save_pretrained`` (its ``config.json`` names the
architecture ``AkiForConditionalGeneration``). Each ``<image>`` of a prompt is replaced by ``num_latents``
placeholders (vLLM's prompt-replacement API), filled with the resampled image tokens; the roles are derived
from the token ids by the rule the AKI processor uses (``media_token_id``, ``assistant_token_id``,
``turn_token_ids`` of the config), so vLLM's answers equal ``AkiForConditionalGeneration.generate``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

from ..models.aki.configuration_aki import AkiConfig
from ..models.aki.image_processing_aki import AkiImageProcessor
from ..models.aki.resampler import PerceiverResampler
from .runtime import MmaRuntime, required_headers

__all__ = ["AkiForConditionalGeneration"]

IMAGE_PLACEHOLDER = "<image>"


class AkiProcessingInfo(BaseProcessingInfo):
    """What vLLM needs to know to process AKI inputs: images only, ``num_latents`` tokens each."""

    def get_hf_config(self) -> AkiConfig:
        return self.ctx.get_hf_config(AkiConfig)

    def get_hf_processor(self, **kwargs: object) -> AkiImageProcessor:
        size = self.get_hf_config().vision_config.image_size
        return AkiImageProcessor(size={"height": size, "width": size})

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_hf_config().num_latents}


class AkiDummyInputsBuilder(BaseDummyInputsBuilder[AkiProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        size = self.info.get_hf_config().vision_config.image_size
        images = self._get_dummy_images(
            width=size, height=size, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
        )
        return {"image": images}


class AkiMultiModalProcessor(BaseMultiModalProcessor[AkiProcessingInfo]):
    """Pixels from :class:`AkiImageProcessor`; each ``<image>`` token -> ``num_latents`` placeholder tokens."""

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        images = hf_data.get("images") or []
        pixels = self.info.get_hf_processor()(images, return_tensors="pt")["pixel_values"]
        return BatchFeature({"pixel_values": pixels})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        media = config.media_token_id
        return [PromptReplacement(modality="image", target=[media], replacement=[media] * config.num_latents)]


@MULTIMODAL_REGISTRY.register_processor(
    AkiMultiModalProcessor, info=AkiProcessingInfo, dummy_inputs=AkiDummyInputsBuilder
)
class AkiForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """vLLM's AKI: image features from the tower and resampler, MMA in the language model's attention."""

    requires_raw_input_tokens = True  # forward() reads the step's token ids to find the media rows
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_regex={
            # transformers 5 saves the SigLIP tower without its `vision_model.` level; vLLM's tower has it.
            re.compile(r"^vision_tower\.(?!vision_model\.)"): "vision_tower.vision_model.",
            re.compile(r"^language_model\.lm_head\.bias$"): "head_bias",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError(f"AKI takes images only, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: AkiConfig = vllm_config.model_config.hf_config
        self.config = config
        text_config = config.text_config
        self.configure_mm_token_handling(
            vocab_size=text_config.vocab_size, mm_token_ids=[config.media_token_id]
        )
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = SiglipVisionModel(
                config.vision_config,
                quant_config=vllm_config.quant_config,
                require_post_norm=True,  # AKI reads last_hidden_state, after the final LayerNorm
                use_head=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.resampler = PerceiverResampler(
                dim=config.vision_config.hidden_size,
                out_dim=text_config.hidden_size,
                depth=config.resampler_depth,
                heads=config.resampler_heads,
                head_dim=config.resampler_head_dim,
                ff_mult=config.resampler_ff_mult,
                num_latents=config.num_latents,
            )
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=text_config.architectures or [_causal_lm_architecture(text_config.model_type)],
            )
        # The released checkpoint's output head has a bias; vLLM's LM heads have none, so it is added here.
        self.head_bias = nn.Parameter(torch.zeros(text_config.vocab_size)) if config.text_head_bias else None
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        headers = None
        if config.use_mma:
            headers = required_headers(
                config,
                media="media_token_id",
                response="assistant_token_id",
                turn="turn_token_ids",
                model="AKI",
            )
        self.mma = MmaRuntime(self.language_model, headers)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        media = self.vision_tower(pixel_values.to(self.vision_tower.dtype))  # (N, P, Dv)
        return list(self.resampler(media))  # N x (num_latents, D_text)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.mma.note_embedding(input_ids, is_multimodal)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        with self.mma.step(input_ids):
            return self.language_model.model(
                input_ids if inputs_embeds is None else None,
                positions,
                intermediate_tensors,
                inputs_embeds=inputs_embeds,
            )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is None:
            return None
        if self.head_bias is not None:
            logits = logits + self.head_bias[: logits.shape[-1]].to(logits.dtype)
        # A placeholder is never an answer (AKI's generation config suppresses it too).
        logits[..., self.config.media_token_id] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


def _causal_lm_architecture(model_type: str) -> str:
    """The causal-LM class name transformers uses for ``model_type`` (vLLM's registry knows it by that name)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
