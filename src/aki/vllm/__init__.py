"""aki's vLLM plugin: AKI and MMA LLaVA models served by vLLM, exact against aki's own ``generate``.

vLLM loads :func:`register` in every process through the entry point group ``vllm.general_plugins``
(``pip install aki[vllm]``). It registers

* ``AkiForConditionalGeneration``: a directory saved by aki's ``AkiForConditionalGeneration`` serves as is
  (``vllm serve DIR`` or ``aki serve DIR --engine vllm``);
* ``MmaLlavaForConditionalGeneration``: vLLM's LLaVA with Modality-Mutual Attention, chosen with
  ``hf_overrides={"architectures": ["MmaLlavaForConditionalGeneration"], "mma_response_start": [...]}``;

and the engine settings MMA needs (:mod:`aki.vllm.config`). How MMA runs inside vLLM's attention is in
:mod:`aki.vllm.attention`; ``docs/vllm.md`` tells the whole story.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

__all__ = ["MMA_ARCHITECTURES", "register"]

# Architecture -> (the class to load, the HF config attribute that turns MMA on; absent means on).
MMA_ARCHITECTURES = {
    "AkiForConditionalGeneration": ("aki.vllm.aki_model:AkiForConditionalGeneration", "use_mma"),
    "MmaLlavaForConditionalGeneration": ("aki.vllm.llava:MmaLlavaForConditionalGeneration", "use_mma"),
}


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register aki's models and MMA's engine checks (idempotent)."""
    _serve_llava_without_torchvision()
    from vllm import ModelRegistry

    import aki.models.aki  # noqa: F401  (registers AkiConfig with transformers' AutoConfig)

    from .config import install_engine_defaults, register_config_hooks

    for architecture, (model_class, mma_flag) in MMA_ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, model_class)
        register_config_hooks(architecture, mma_flag)
    install_engine_defaults()


def _serve_llava_without_torchvision() -> None:
    """Let vLLM's LLaVA import where torchvision is absent (no CPU build of it is on PyPI).

    vLLM's LLaVA module imports one helper, ``_num_image_tokens``, from transformers' torchvision-backed Pixtral
    image processor, whose module imports torchvision at its top. transformers' PIL-backed Pixtral image
    processor defines the same helper; without torchvision, that module stands in for the other.
    """
    torchvision_backed = "transformers.models.pixtral.image_processing_pixtral"
    if importlib.util.find_spec("torchvision") is not None or torchvision_backed in sys.modules:
        return
    pil_backed = importlib.import_module("transformers.models.pixtral.image_processing_pil_pixtral")
    if hasattr(pil_backed, "_num_image_tokens"):
        sys.modules[torchvision_backed] = pil_backed
