"""vLLM's own LLaVA with MMA answers as transformers' LLaVA with ``aki.enable_mma`` does.

The tiny LLaVA-1.5 speaks its template, ``USER: <image>\\n... ASSISTANT:``; both headers are two tokens in
its tokenizer (``ASSISTANT`` and ``:``), handed to vLLM as ``mma_response_start`` / ``mma_turn_start``. The
reference generates with the roles those headers give (:class:`aki.vllm.roles.MmaHeaders`).
"""

from __future__ import annotations

import pytest
from vllm_helpers import VLLM_MISSING

pytest.importorskip("vllm.entrypoints.llm", reason=VLLM_MISSING)

from transformers import AutoProcessor, LlavaForConditionalGeneration
from vllm_helpers import (
    CHATS,
    IMAGE_CHATS,
    LOGPROB_TOLERANCE,
    first_step_gap,
    hf_answers,
    images_of,
    vllm_answers,
)

import aki
from aki.vllm.roles import MmaHeaders

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def processor(llava_dir):
    processor = AutoProcessor.from_pretrained(llava_dir)
    processor.tokenizer.padding_side = "left"
    return processor


@pytest.fixture(scope="module")
def headers(processor):
    ids = processor.tokenizer.convert_tokens_to_ids
    return {
        "mma_response_start": [[ids("ASSISTANT"), ids(":")]],
        "mma_turn_start": [[ids("USER"), ids(":")]],
    }


@pytest.fixture(scope="module")
def prompts(processor):
    return [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in CHATS]


@pytest.fixture(scope="module")
def hf_llava(llava_dir, processor, prompts, headers):
    """transformers' answers to all chats as one left-padded batch: with MMA (roles from the headers) and causal."""
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    images = [image for chat in CHATS for image in images_of(chat)]
    batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    roles = MmaHeaders.of(
        model.config.image_token_index, headers["mma_response_start"], headers["mma_turn_start"]
    ).roles(batch["input_ids"])
    eos = model.config.text_config.eos_token_id
    causal = hf_answers(model, batch, eos=eos)
    mma = hf_answers(aki.enable_mma(model), batch, eos=eos, mma_roles=roles)
    return {"mma": mma, "causal": causal}


@pytest.fixture(scope="module")
def mma_outputs(engines, llava_dir, prompts, headers):
    overrides = {"architectures": ["MmaLlavaForConditionalGeneration"], **headers}
    llm = engines.get(llava_dir, hf_overrides=overrides, limit_mm_per_prompt={"image": 2})
    return vllm_answers(llm, prompts, CHATS)


@pytest.mark.parametrize("row", range(len(CHATS)))
def test_mma_llava_equals_transformers_llava_with_enable_mma(mma_outputs, hf_llava, row):
    output, reference = mma_outputs[row], hf_llava["mma"][row]
    assert list(output.outputs[0].token_ids) == reference.tokens
    assert first_step_gap(output, reference) < LOGPROB_TOLERANCE


def test_mma_really_changed_llavas_answers_to_images(mma_outputs, hf_llava):
    gaps = [first_step_gap(mma_outputs[row], hf_llava["causal"][row]) for row in range(len(CHATS))]
    assert all(gaps[row] > 1e-3 for row in IMAGE_CHATS), gaps
    assert gaps[-1] < LOGPROB_TOLERANCE  # no image: causal
    assert any(hf_llava["mma"][row].tokens != hf_llava["causal"][row].tokens for row in IMAGE_CHATS)


def test_vllms_own_llava_on_the_same_checkpoint_is_causal(engines, llava_dir, prompts, hf_llava):
    outputs = vllm_answers(engines.get(llava_dir, limit_mm_per_prompt={"image": 2}), prompts, CHATS)
    for output, reference in zip(outputs, hf_llava["causal"], strict=True):
        assert list(output.outputs[0].token_ids) == reference.tokens
        assert first_step_gap(output, reference) < LOGPROB_TOLERANCE
