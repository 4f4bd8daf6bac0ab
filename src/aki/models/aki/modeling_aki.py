"""AKI as a native Hugging Face model: SigLIP vision tower -> Perceiver resampler -> any causal LM, with MMA.

Each image is encoded once (``get_image_features``: the vision tower's ``last_hidden_state``, resampled to
``num_latents`` tokens in the LM width); its tokens replace the image's placeholder positions with one
``masked_scatter`` after a count check. The language model is ``AutoModelForCausalLM.from_config(text_config)``
and Modality-Mutual Attention is switched on for it with :func:`aki.integration.enable_mma`; ``forward`` and
``generate`` take ``mma_roles`` (``[B, L]`` of :class:`aki.mma.Role`, from :class:`AkiProcessor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.utils.generic import can_return_tuple

from ...integration import CACHE_KWARG, disable_mma, enable_mma, is_mma_enabled
from ...mma import roles_from_token_ids
from .configuration_aki import AkiConfig
from .resampler import PerceiverResampler


@dataclass
class AkiCausalLMOutputWithPast(ModelOutput):
    """What :meth:`AkiForConditionalGeneration.forward` returns. The KV cache is under the name the installed
    transformers uses (``cache``, or ``past_key_values`` before 5.24); the other field stays None.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    past_key_values: Cache | None = None
    last_hidden_state: torch.FloatTensor | None = (
        None  # the language model's, before its head (TRL's fused head)
    )
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


class AkiPreTrainedModel(PreTrainedModel):
    config: AkiConfig
    config_class = AkiConfig
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True  # the vision tower may use it; MMA refuses it for the LM (enable_mma)
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PerceiverResampler):
            init.normal_(module.latents, std=1.0)  # randn latents, as in the reference
            # The reference's default Linear init; normal(0.02) drowns the image in the latents (docs/design.md).
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    bound = layer.in_features**-0.5
                    init.uniform_(layer.weight, -bound, bound)
                    if layer.bias is not None:
                        init.uniform_(layer.bias, -bound, bound)


class AkiForConditionalGeneration(AkiPreTrainedModel, GenerationMixin):
    """Vision tower, resampler and language model; ``generate()`` with MMA, KV cache and left padding.

    Example:
        >>> from aki.models.aki.builders import aki_tiny
        >>> model = AkiForConditionalGeneration(aki_tiny())
        >>> ids = torch.tensor([[1, 63, 63, 63, 63, 5, 6]])  # 4 placeholders = one image of 4 latents
        >>> model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32)).logits.shape
        torch.Size([1, 7, 64])
    """

    def __init__(self, config: AkiConfig) -> None:
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.resampler = PerceiverResampler(
            dim=config.vision_config.hidden_size,
            out_dim=config.text_config.hidden_size,
            depth=config.resampler_depth,
            heads=config.resampler_heads,
            head_dim=config.resampler_head_dim,
            ff_mult=config.resampler_ff_mult,
            num_latents=config.num_latents,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.text_head_bias:
            head = self.language_model.get_output_embeddings()
            self.language_model.set_output_embeddings(
                nn.Linear(head.in_features, head.out_features, bias=True)
            )
        if config.use_mma:
            enable_mma(self.language_model, record=False)  # AkiConfig.use_mma is the record
        self.post_init()
        if self.generation_config is not None and config.media_token_id is not None:
            # A placeholder is never an answer: without pixels behind it, it would embed as plain text.
            self.generation_config.suppress_tokens = [config.media_token_id]

    # ----------------------------------------------------------------------------------------------
    # Parts
    # ----------------------------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def set_mma(self, enabled: bool) -> None:
        """Switch Modality-Mutual Attention on or off (off: plain causal attention, bit for bit)."""
        if enabled:
            enable_mma(self.language_model, record=False)  # AkiConfig.use_mma is the record
        else:
            disable_mma(self.language_model)
        self.config.use_mma = enabled

    def set_trainable(
        self, *, vision_tower: bool = False, resampler: bool = True, language_model: bool = True
    ) -> dict[str, int]:
        """Freeze or unfreeze the three parts; the defaults are the paper's (vision tower frozen).

        Returns the number of trainable parameters of each part.
        """
        parts = {"vision_tower": vision_tower, "resampler": resampler, "language_model": language_model}
        for name, trainable in parts.items():
            getattr(self, name).requires_grad_(trainable)
        return {
            name: sum(p.numel() for p in getattr(self, name).parameters() if p.requires_grad)
            for name in parts
        }

    # ----------------------------------------------------------------------------------------------
    # Images
    # ----------------------------------------------------------------------------------------------

    def get_image_features(
        self, pixel_values: torch.Tensor, return_dict: bool = True
    ) -> BaseModelOutputWithPooling:
        """Encode images ``(N, 3, H, W)``: ``last_hidden_state`` of the vision tower ``(N, P, D_vision)`` and
        ``pooler_output``, the resampled tokens ``(N, num_latents, D_text)``. ``generate()`` calls this once,
        before the prefill (``return_dict`` is its flag; the output is always a ``ModelOutput``).
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape [num_images, channels, height, width], got {tuple(pixel_values.shape)}"
            )
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        tower_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tower_grad):  # the frozen tower keeps no activations for backward
            media = self.vision_tower(pixel_values).last_hidden_state  # (N, P, Dv)
        return BaseModelOutputWithPooling(last_hidden_state=media, pooler_output=self.resampler(media))

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write ``image_features`` ``(N, num_latents, D)`` into the placeholder positions of ``inputs_embeds``.

        Raises ``ValueError`` naming both counts (and the placeholders per sample) when they differ.
        """
        placeholders = input_ids == self.config.media_token_id  # (B, L)
        found = int(placeholders.sum())
        expected = image_features.shape[0] * image_features.shape[1]
        if found != expected:
            per_sample = placeholders.sum(-1).tolist()
            raise ValueError(
                f"{image_features.shape[0]} images give {expected} image tokens ({self.config.num_latents} each) "
                f"but input_ids hold {found} placeholder tokens (per sample: {per_sample}); every <image> "
                f"must be expanded to {self.config.num_latents} placeholders (AkiProcessor does this)"
            )
        mask = placeholders.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.dtype))

    # ----------------------------------------------------------------------------------------------
    # Forward and generation
    # ----------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mma_roles: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> AkiCausalLMOutputWithPast:
        """Causal-LM forward with images in place of their placeholders.

        ``mma_roles`` ``[B, L']`` (``L' <= L``; later positions are RESPONSE) defaults to roles derived from
        ``input_ids`` (placeholders MEDIA) and ``labels`` (labelled positions RESPONSE). Without
        ``position_ids``, positions count the valid tokens of ``attention_mask``, so left padding is exact.
        The KV cache comes as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier).
        """
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs:
            raise ValueError("give either pixel_values or mm_encoder_outputs, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)

        past_length = 0 if cache is None else int(cache.get_seq_length())
        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values)
        if image_outputs is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to locate their placeholders")
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_outputs.pooler_output)
        elif input_ids is not None and past_length == 0:
            placeholders = int((input_ids == self.config.media_token_id).sum())
            if placeholders:
                raise ValueError(
                    f"input_ids hold {placeholders} image placeholder tokens but no pixel_values were given"
                )

        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]

        if is_mma_enabled(self.language_model):
            if mma_roles is None and input_ids is not None:
                mma_roles = self.roles_from_input_ids(input_ids, labels, attention_mask)
            if mma_roles is not None and past_length >= mma_roles.shape[1]:
                mma_roles = None  # decoding past the prompt: every query is RESPONSE, attention is causal
            kwargs["mma_roles"] = mma_roles
        last_hidden: dict[str, torch.Tensor] = {}

        def keep_last_hidden_state(module, args, output) -> None:
            last_hidden["state"] = output.last_hidden_state

        keep = self.language_model.get_decoder().register_forward_hook(keep_last_hidden_state)
        try:
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                logits_to_keep=logits_to_keep,
                return_dict=True,
                **{CACHE_KWARG: cache},
                **kwargs,
            )
        finally:
            keep.remove()
        return AkiCausalLMOutputWithPast(
            loss=outputs.loss,
            logits=outputs.logits,
            **{CACHE_KWARG: outputs.get(CACHE_KWARG)},
            last_hidden_state=last_hidden.get("state"),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )

    def generate(
        self, inputs: torch.Tensor | None = None, *args, mma_roles: torch.Tensor | None = None, **kwargs
    ):
        """``GenerationMixin.generate``; without ``mma_roles``, roles are derived from the prompt once, so
        every generated token is RESPONSE (also when decoding without a cache recomputes the prefix).
        """
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if mma_roles is None and input_ids is not None and is_mma_enabled(self.language_model):
            mma_roles = self.roles_from_input_ids(input_ids, attention_mask=kwargs.get("attention_mask"))
        if mma_roles is not None:
            kwargs["mma_roles"] = mma_roles
        return super().generate(inputs, *args, **kwargs)

    def roles_from_input_ids(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The roles :class:`AkiProcessor` would give ``input_ids`` (:func:`aki.mma.roles_from_token_ids` with
        the config's template headers), labelled positions RESPONSE; None when there is no image placeholder.
        """
        config = self.config
        if config.media_token_id is None or not bool((input_ids == config.media_token_id).any()):
            return None
        return roles_from_token_ids(
            input_ids,
            config.media_token_id,
            response_start_ids=() if config.assistant_token_id is None else config.assistant_token_id,
            turn_start_ids=config.turn_token_ids or (),
            labels=labels,
            attention_mask=attention_mask
            if attention_mask is not None and attention_mask.dim() == 2
            else None,
        )


__all__ = ["AkiCausalLMOutputWithPast", "AkiForConditionalGeneration", "AkiPreTrainedModel"]
