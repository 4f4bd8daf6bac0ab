"""What MMA needs from vLLM's engine: every prompt prefilled whole in one step, and no image KV reused.

* Chunked prefill may end a step between an image and the question after it: the image's rows would be
  computed before the text they must see exists. Off for MMA models.
* Prefix caching keys a cached block on the tokens up to it: an image's KV computed while it saw one question
  would be reused for another question. Off for MMA models.
* Speculative decoding verifies several tokens per step after the prompt, and a KV transfer connector
  (disaggregated prefill) or micro-batching (dual-batch overlap) hand the prefill to code that does not run
  MMA. Refused.

When an MMA model is loaded, vLLM's defaults for the first two are turned off; a setting that asks for any of
these raises :class:`aki.vllm.roles.MmaError`, whose message names MMA.
"""

from __future__ import annotations

import functools
from typing import Any

from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

from .roles import MmaError

__all__ = ["check_engine_config", "install_engine_defaults", "mma_is_active", "register_config_hooks"]

# Architectures this plugin registers, and whether MMA is on for a given HF config of them.
_MMA_ARCHITECTURES: dict[str, str] = {}


def mma_is_active(model_config: Any) -> bool:
    """Whether the model of ``model_config`` (a vLLM ``ModelConfig``) runs with MMA."""
    architecture = getattr(model_config, "architecture", None)
    if architecture not in _MMA_ARCHITECTURES:
        return False
    return bool(getattr(model_config.hf_config, _MMA_ARCHITECTURES[architecture], True))


def check_engine_config(vllm_config: Any) -> None:
    """Raise :class:`MmaError` naming every engine setting that would make MMA inexact for this model."""
    if not mma_is_active(vllm_config.model_config):
        return
    scheduler, cache, parallel = (
        vllm_config.scheduler_config,
        vllm_config.cache_config,
        vllm_config.parallel_config,
    )
    refused = {
        "chunked prefill (enable_chunked_prefill: a step could end between an image and its question)": (
            scheduler.enable_chunked_prefill
        ),
        "prefix caching (enable_prefix_caching: an image's KV would be reused for another question)": (
            cache.enable_prefix_caching
        ),
        "speculative decoding (speculative_config)": vllm_config.speculative_config is not None,
        "a KV transfer connector (kv_transfer_config: the prefill would run without MMA)": (
            vllm_config.kv_transfer_config is not None
        ),
        "dual-batch overlap (enable_dbo)": bool(getattr(parallel, "enable_dbo", False)),
    }
    found = [name for name, present in refused.items() if present]
    if found:
        raise MmaError(
            f"MMA (Modality-Mutual Attention) cannot run {vllm_config.model_config.architecture} with "
            + "; ".join(found)
            + ". Media tokens must see the prompt text after them, so each prompt is prefilled whole in one "
            "step and its KV is never shared (use_mma=false in the model's config serves it causally)."
        )


class MmaModelConfig(VerifyAndUpdateConfig):
    """vLLM's per-architecture config hook: refuse what MMA cannot run with."""

    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        check_engine_config(vllm_config)


def register_config_hooks(architecture: str, mma_flag: str) -> None:
    """Check the engine config of ``architecture``; MMA is on when its HF config's ``mma_flag`` is true."""
    _MMA_ARCHITECTURES[architecture] = mma_flag
    MODELS_CONFIG_MAP[architecture] = MmaModelConfig


def _apply_mma_defaults(engine_args: Any) -> None:
    """Chunked prefill and prefix caching off unless asked for; asked for, refused (the message names MMA)."""
    for name in ("enable_chunked_prefill", "enable_prefix_caching"):
        if getattr(engine_args, name) is True:
            raise MmaError(
                f"MMA (Modality-Mutual Attention) cannot run with {name}=True: media tokens must see the prompt "
                "text after them, so each prompt is prefilled whole in one step and its KV is never reused "
                "for another prompt. Leave it unset (the MMA models turn it off)."
            )
        setattr(engine_args, name, False)


def install_engine_defaults() -> None:
    """Make vLLM's engine arguments default to what MMA needs when they load an MMA model (idempotent).

    vLLM resolves unset (None) ``enable_chunked_prefill`` / ``enable_prefix_caching`` to the model's defaults
    in ``EngineArgs._set_default_chunked_prefill_and_prefix_caching_args``; for an MMA model they become False
    first, and an explicit True raises. Where that method does not exist (another vLLM version), the config
    hook still refuses the settings, with the same message.
    """
    from vllm.engine.arg_utils import EngineArgs

    original = getattr(EngineArgs, "_set_default_chunked_prefill_and_prefix_caching_args", None)
    if original is None or getattr(original, "_aki_mma", False):
        return

    @functools.wraps(original)
    def set_defaults(self, model_config):
        if mma_is_active(model_config):
            _apply_mma_defaults(self)
        return original(self, model_config)

    set_defaults._aki_mma = True
    EngineArgs._set_default_chunked_prefill_and_prefix_caching_args = set_defaults
