"""What MMA cannot run with is refused, loudly, with a message that names MMA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm_helpers import VLLM_MISSING

pytest.importorskip("vllm.entrypoints.llm", reason=VLLM_MISSING)

from aki.vllm.config import check_engine_config
from aki.vllm.roles import MmaError

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            {"enable_chunked_prefill": True},
            r"MMA \(Modality-Mutual Attention\) cannot run with enable_chunked_prefill",
        ),
        (
            {"enable_prefix_caching": True},
            r"MMA \(Modality-Mutual Attention\) cannot run with enable_prefix_caching",
        ),
        (
            {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}},
            r"MMA \(Modality-Mutual Attention\) cannot run AkiForConditionalGeneration with speculative decoding",
        ),
    ],
    ids=["chunked-prefill", "prefix-caching", "speculative-decoding"],
)
def test_an_mma_model_refuses_engine_settings_that_would_break_it(engines, aki_dir, option, message):
    engines.close()
    with pytest.raises(MmaError, match=message):
        engines.get(aki_dir, **option)


def test_the_same_settings_are_accepted_for_the_causal_model(engines, aki_dir):
    llm = engines.get(aki_dir, enable_prefix_caching=True, hf_overrides={"use_mma": False})
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is True


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        ("aki", {"assistant_token_id": None}, "MMA for AKI needs the chat template's assistant header"),
        (
            "llava",
            {"architectures": ["MmaLlavaForConditionalGeneration"]},
            "MMA for LlavaConfig needs the chat template's assistant header in the model config "
            r"\(mma_response_start\)",
        ),
    ],
)
def test_mma_without_an_assistant_header_is_refused(engines, aki_dir, llava_dir, model, overrides, message):
    # Without it, a request recomputed after preemption would let its media see the generated tokens.
    engines.close()
    with pytest.raises(Exception, match=message):
        engines.get(aki_dir if model == "aki" else llava_dir, hf_overrides=overrides)
    engines.close()


def engine_config(**settings):
    """A stand-in for vLLM's engine config of an AKI model with MMA, with ``settings`` changed."""
    defaults = {"enable_chunked_prefill": False, "enable_prefix_caching": False, "speculative_config": None}
    values = {**defaults, "kv_transfer_config": None, "enable_dbo": False, **settings}
    return SimpleNamespace(
        model_config=SimpleNamespace(
            architecture="AkiForConditionalGeneration", hf_config=SimpleNamespace(use_mma=True)
        ),
        scheduler_config=SimpleNamespace(enable_chunked_prefill=values["enable_chunked_prefill"]),
        cache_config=SimpleNamespace(enable_prefix_caching=values["enable_prefix_caching"]),
        parallel_config=SimpleNamespace(enable_dbo=values["enable_dbo"]),
        speculative_config=values["speculative_config"],
        kv_transfer_config=values["kv_transfer_config"],
    )


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"enable_chunked_prefill": True}, "chunked prefill"),
        ({"enable_prefix_caching": True}, "prefix caching"),
        ({"kv_transfer_config": object()}, "a KV transfer connector"),
        ({"enable_dbo": True}, "dual-batch overlap"),
    ],
)
def test_the_config_check_names_each_refused_setting(settings, named):
    check_engine_config(engine_config())  # the defaults MMA sets pass
    with pytest.raises(MmaError, match=rf"MMA \(Modality-Mutual Attention\) cannot run .* with {named}"):
        check_engine_config(engine_config(**settings))
