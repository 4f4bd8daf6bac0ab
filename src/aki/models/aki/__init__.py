"""The AKI model as native Hugging Face classes, registered with the Auto classes on import.

After ``import aki``, ``AutoConfig``, ``AutoModelForImageTextToText``, ``AutoImageProcessor`` and
``AutoProcessor`` load a saved AKI directory.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .builders import aki_4b, aki_config, aki_tiny, tiny_tokenizer, token_ids_from_tokenizer
from .configuration_aki import AkiConfig
from .convert import convert_reference, load_reference
from .image_processing_aki import AkiImageProcessor
from .modeling_aki import AkiForConditionalGeneration, AkiPreTrainedModel
from .processing_aki import AkiProcessor, chat_template


def register_auto_classes() -> None:
    """Register AKI with transformers' Auto classes (idempotent)."""
    AutoConfig.register(AkiConfig.model_type, AkiConfig, exist_ok=True)
    AutoModelForImageTextToText.register(AkiConfig, AkiForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(AkiConfig, image_processor_classes={"pil": AkiImageProcessor}, exist_ok=True)
    AutoProcessor.register(AkiConfig, AkiProcessor, exist_ok=True)


register_auto_classes()

__all__ = [
    "AkiConfig",
    "AkiForConditionalGeneration",
    "AkiImageProcessor",
    "AkiPreTrainedModel",
    "AkiProcessor",
    "aki_4b",
    "aki_config",
    "aki_tiny",
    "chat_template",
    "convert_reference",
    "load_reference",
    "register_auto_classes",
    "tiny_tokenizer",
    "token_ids_from_tokenizer",
]
