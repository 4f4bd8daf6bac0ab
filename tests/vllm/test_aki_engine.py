"""AKI served by vLLM answers exactly as aki's own ``generate`` with MMA, and not as causal attention does.

aki answers the chats as one left-padded batch; vLLM as one ragged batch of the same requests. Greedy tokens
must be equal and the first step's log-probs equal to 1e-4 (fp32).
"""

from __future__ import annotations

import pytest
from vllm_helpers import VLLM_MISSING

pytest.importorskip("vllm.entrypoints.llm", reason=VLLM_MISSING)

from transformers import AutoProcessor
from vllm_helpers import (
    CHATS,
    IMAGE_CHATS,
    LOGPROB_TOLERANCE,
    first_step_gap,
    hf_answers,
    images_of,
    until_eos,
    vllm_answers,
)

from aki.models import AkiForConditionalGeneration

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def processor(aki_dir):
    return AutoProcessor.from_pretrained(aki_dir)


@pytest.fixture(scope="module")
def prompts(processor):
    return [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in CHATS]


@pytest.fixture(scope="module")
def aki_model(aki_dir):
    return AkiForConditionalGeneration.from_pretrained(aki_dir).eval()


def aki_generate(model, processor, prompts, *, mma: bool, **options):
    """aki's answers to every chat, as one left-padded batch."""
    images = [images_of(chat) for chat in CHATS]
    batch = processor(images=[image for group in images for image in group], text=prompts)
    model.set_mma(mma)
    try:
        return hf_answers(
            model,
            batch,
            eos=model.config.text_config.eos_token_id,
            suppress=model.config.media_token_id,
            **options,
        )
    finally:
        model.set_mma(True)


@pytest.fixture(scope="module")
def aki_mma(aki_model, processor, prompts):
    return aki_generate(aki_model, processor, prompts, mma=True)


@pytest.fixture(scope="module")
def aki_causal(aki_model, processor, prompts):
    return aki_generate(aki_model, processor, prompts, mma=False)


@pytest.fixture(scope="module")
def mma_outputs(engines, aki_dir, prompts):
    return vllm_answers(engines.get(aki_dir, limit_mm_per_prompt={"image": 2}), prompts, CHATS)


def test_vllm_tokenizes_and_expands_the_prompts_as_the_aki_processor_does(mma_outputs, processor, prompts):
    for output, prompt, chat in zip(mma_outputs, prompts, CHATS, strict=True):
        images = images_of(chat)
        expected = processor(images=images or None, text=prompt)["input_ids"][0].tolist()
        assert output.prompt_token_ids == expected


@pytest.mark.parametrize("row", range(len(CHATS)))
def test_greedy_tokens_and_first_logprobs_equal_akis_generate_with_mma(mma_outputs, aki_mma, row):
    output, reference = mma_outputs[row], aki_mma[row]
    assert list(output.outputs[0].token_ids) == reference.tokens[: len(output.outputs[0].token_ids)]
    assert len(output.outputs[0].token_ids) == len(reference.tokens)
    assert first_step_gap(output, reference) < LOGPROB_TOLERANCE


def test_mma_really_changed_the_answers_to_images(mma_outputs, aki_mma, aki_causal):
    # The media rows saw the question: every image prompt's first step moves, the text-only one does not.
    gaps = [first_step_gap(mma_outputs[row], aki_causal[row]) for row in range(len(CHATS))]
    assert all(gaps[row] > 1e-3 for row in IMAGE_CHATS), gaps
    assert gaps[-1] < LOGPROB_TOLERANCE
    changed = [row for row in IMAGE_CHATS if aki_mma[row].tokens != aki_causal[row].tokens]
    assert changed, "no greedy answer changed"  # this tiny model: 1 of 5 within 8 tokens


def test_the_same_weights_with_use_mma_false_answer_as_causal_aki(engines, aki_dir, prompts, aki_causal):
    outputs = vllm_answers(
        engines.get(aki_dir, limit_mm_per_prompt={"image": 2}, hf_overrides={"use_mma": False}),
        prompts,
        CHATS,
    )
    for output, reference in zip(outputs, aki_causal, strict=True):
        assert list(output.outputs[0].token_ids) == reference.tokens
        assert first_step_gap(output, reference) < LOGPROB_TOLERANCE


def test_preemption_recomputes_requests_to_the_same_answers(engines, aki_dir, prompts):
    # 8 blocks of 32 tokens for 6 requests of 130 to 160 tokens: vLLM must preempt and recompute some of them.
    long = {"new_tokens": 60, "ignore_eos": True}
    roomy = vllm_answers(engines.get(aki_dir, limit_mm_per_prompt={"image": 2}), prompts, CHATS, **long)
    tight = engines.get(
        aki_dir,
        limit_mm_per_prompt={"image": 2},
        max_model_len=160,
        block_size=32,
        num_gpu_blocks_override=8,
        disable_log_stats=False,
    )
    squeezed = vllm_answers(tight, prompts, CHATS, **long)
    preemptions = {metric.name: getattr(metric, "value", None) for metric in tight.get_metrics()}
    assert preemptions["vllm:num_preemptions"] >= 1
    assert [list(o.outputs[0].token_ids) for o in squeezed] == [list(o.outputs[0].token_ids) for o in roomy]


def test_answers_stop_at_the_end_of_sequence_and_never_hold_the_image_placeholder(mma_outputs, aki_model):
    eos = aki_model.config.text_config.eos_token_id
    for output in mma_outputs:
        tokens = list(output.outputs[0].token_ids)
        assert until_eos(tokens, eos) == tokens
        assert aki_model.config.media_token_id not in tokens


def test_an_mma_engine_defaults_to_whole_prompts_and_no_prefix_caching(engines, aki_dir):
    config = engines.get(aki_dir, limit_mm_per_prompt={"image": 2}).llm_engine.vllm_config
    assert config.scheduler_config.enable_chunked_prefill is False
    assert config.cache_config.enable_prefix_caching is False
    assert config.scheduler_config.max_num_batched_tokens >= config.model_config.max_model_len
