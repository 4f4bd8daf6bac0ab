"""Configuration of AKI: a SigLIP vision tower, a Perceiver resampler and any causal language model."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

try:
    from transformers.configuration_utils import SubConfigSpec  # transformers >= 5.20
except ImportError:
    SubConfigSpec = None

# The model type of each sub-config when a config (or a dict without "model_type") does not name one.
SUB_CONFIG_TYPES = {"vision_config": "siglip_vision_model", "text_config": "llama"}


@strict
class AkiConfig(PreTrainedConfig):
    r"""Configuration of :class:`AkiForConditionalGeneration`, shaped like ``LlavaConfig``.

    ``vision_config`` is a SigLIP vision config (its ``last_hidden_state`` feeds the resampler);
    ``text_config`` is the config of any causal LM (Llama, Phi-3, Qwen2, ...), built with
    ``AutoModelForCausalLM.from_config``. Each ``<image>`` placeholder becomes ``num_latents`` positions
    holding ``media_token_id``, filled with the resampled image tokens. ``assistant_token_id`` and
    ``turn_token_ids`` are the chat template's headers from which the model derives MMA roles when none are
    given (:func:`aki.mma.roles_from_token_ids`, the rule :class:`AkiProcessor` uses). ``text_head_bias`` gives the
    language model's output head a bias (the released AKI checkpoint has one). ``use_mma`` turns
    Modality-Mutual Attention on. Sizes live in :mod:`aki.models.aki.builders` (``aki_tiny``, ``aki_4b``).

    Example:
        >>> from aki.models.aki.builders import aki_tiny
        >>> config = aki_tiny()
        >>> config.num_latents, config.text_config.model_type
        (4, 'llama')
    """

    model_type = "aki"
    attribute_map = {"image_token_id": "media_token_id"}
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            key: SubConfigSpec(config_class=AutoConfig, model_type=model_type)
            for key, model_type in SUB_CONFIG_TYPES.items()
        }
    else:  # transformers 5.19: sub-configs are built in __post_init__, as its LlavaConfig does
        sub_configs = dict.fromkeys(SUB_CONFIG_TYPES, AutoConfig)

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_head_dim: int = 64
    resampler_ff_mult: int = 4
    num_latents: int = 144
    media_token_id: int | None = None
    assistant_token_id: int | None = None
    turn_token_ids: list[int] | None = None
    text_head_bias: bool = False
    use_mma: bool = True

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            for key, model_type in SUB_CONFIG_TYPES.items():
                value = getattr(self, key)
                if value is None or isinstance(value, dict):
                    value = dict(value or {})
                    setattr(self, key, CONFIG_MAPPING[value.pop("model_type", model_type)](**value))
        super().__post_init__(**kwargs)
        self._check_sizes()
        self._check_media_token()

    def _check_sizes(self) -> None:
        sizes = {
            "resampler_depth": self.resampler_depth,
            "resampler_heads": self.resampler_heads,
            "resampler_head_dim": self.resampler_head_dim,
            "resampler_ff_mult": self.resampler_ff_mult,
            "num_latents": self.num_latents,
        }
        bad = {name: value for name, value in sizes.items() if value < 1}
        if bad:
            raise ValueError(f"AkiConfig sizes must be >= 1, got {bad}")

    def _check_media_token(self) -> None:
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if (
            self.media_token_id is not None
            and vocab_size is not None
            and not 0 <= self.media_token_id < vocab_size
        ):
            raise ValueError(
                f"media_token_id={self.media_token_id} is outside the text vocabulary of {vocab_size} tokens"
            )


__all__ = ["AkiConfig"]
