"""aki: Modality-Mutual Attention (MMA) for multimodal LLMs.

``aki.mma`` is the rule in pure torch; ``aki.enable_mma`` turns it on for a Hugging Face model.
"""

from .collator import MmaDataCollator
from .integration import disable_mma, enable_mma, from_pretrained, is_mma_enabled
from .mma import Role, mma_mask
from .models import AkiConfig, AkiForConditionalGeneration, AkiProcessor  # registers the Auto classes

__version__ = "0.1.0"

__all__ = [
    "AkiConfig",
    "AkiForConditionalGeneration",
    "AkiProcessor",
    "MmaDataCollator",
    "Role",
    "__version__",
    "disable_mma",
    "enable_mma",
    "from_pretrained",
    "is_mma_enabled",
    "mma_mask",
]
