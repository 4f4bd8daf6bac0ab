"""Models built on MMA: AKI (``aki.models.aki``). Importing this package registers them with the Auto classes."""

from .aki import (
    AkiConfig,
    AkiForConditionalGeneration,
    AkiImageProcessor,
    AkiProcessor,
    aki_4b,
    aki_tiny,
    convert_reference,
    tiny_tokenizer,
)
from .loading import load_pretrained

__all__ = [
    "AkiConfig",
    "AkiForConditionalGeneration",
    "AkiImageProcessor",
    "AkiProcessor",
    "aki_4b",
    "aki_tiny",
    "convert_reference",
    "load_pretrained",
    "tiny_tokenizer",
]
