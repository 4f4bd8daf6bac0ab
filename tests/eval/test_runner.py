"""aki.generation.Runner: batched generation equals one prompt at a time, stop strings, hand-computed
log-likelihoods, the MMA switch."""

from __future__ import annotations

import math

import pytest
import torch
from eval_helpers import solid

from aki.generation import Prompt, Runner, SamplingParams

PROMPTS = [
    Prompt("Is there a cat in the image?", [solid((255, 0, 0))]),
    Prompt("What color is the cat?", [solid((0, 0, 255)), solid((0, 255, 0))]),
    Prompt("Is there a dog?"),
    Prompt("How many cats are there? Is there a dog? What color is the cat?", [solid((9, 9, 9))]),
    Prompt("Is there a dog?", [solid((200, 100, 0))]),
]


def runner(saved, **options) -> Runner:
    return Runner.from_pretrained(saved.path, device="cpu", **options)


def test_batched_generation_equals_one_prompt_at_a_time(random_aki):
    batched = runner(random_aki, batch_size=3)
    one_by_one = Runner(batched.model, batched.processor, batch_size=1)
    seen = []
    answers = batched.generate(PROMPTS, SamplingParams(max_new_tokens=6), on_batch=seen.append)
    assert answers == one_by_one.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    assert seen == [3, 2]  # progress: one call per batch, with its size
    assert all(answers)


def test_stop_strings_end_generation_and_are_cut_off(yes_aki):
    yes = runner(yes_aki)
    steps = []
    hook = yes.model.language_model.register_forward_hook(lambda *args: steps.append(1))
    assert yes.generate(PROMPTS[:1], SamplingParams(max_new_tokens=5)) == ["YesYesYesYesYes"]
    assert len(steps) == 5  # prefill, then one forward per further token
    steps.clear()
    assert yes.generate(PROMPTS[:1], SamplingParams(max_new_tokens=5, stop=("sY",))) == ["Ye"]  # cut at "sY"
    assert len(steps) == 2  # "YesYes" holds the stop string: the row ended after two tokens
    hook.remove()


def test_loglikelihood_hand_computed(yes_aki):
    # p(Yes) = 1/2 and p(any other token) = 1 / (2 (V - 1)) at every position (see conftest).
    log_yes = math.log(1 / 2)
    log_other = math.log(1 / (2 * (yes_aki.vocab_size - 1)))
    yes = runner(yes_aki, batch_size=2)  # three requests of different lengths: two batches, left-padded
    results = yes.loglikelihood(PROMPTS[:3], ["Yes", "No", "Yes Yes"])
    expected = [(log_yes, True), (log_other, False), (2 * log_yes + log_other, False)]  # "Yes", " ", "Yes"
    for (value, greedy), (expected_value, expected_greedy) in zip(results, expected, strict=True):
        assert value == pytest.approx(expected_value, abs=1e-5)
        assert greedy == expected_greedy


def test_loglikelihood_equals_an_unpadded_forward(random_aki):
    batched = runner(random_aki, batch_size=4)
    continuations = ["Yes", "It is red", "No", "Maybe blue"]
    results = batched.loglikelihood(PROMPTS[:4], continuations)
    tokenizer = batched.processor.tokenizer
    for prompt, continuation, (value, greedy) in zip(PROMPTS, continuations, results, strict=False):
        text, _ = prompt.render(batched.processor)
        inputs = batched.processor(text=[text + continuation], images=list(prompt.images) or None)
        count = len(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logprobs = batched.model(**inputs).logits[0].log_softmax(-1)  # (L, V), no padding
        ids = inputs["input_ids"][0]
        positions = range(len(ids) - count, len(ids))
        reference = sum(float(logprobs[p - 1, ids[p]]) for p in positions)
        assert value == pytest.approx(reference, abs=1e-4)
        assert greedy == all(int(logprobs[p - 1].argmax()) == int(ids[p]) for p in positions)


def test_mma_switch_changes_image_prompts_only(random_aki):
    with_mma = runner(random_aki, mma=True)
    causal = runner(random_aki, mma=False, attn_implementation="eager")
    assert (with_mma.mma, causal.mma) == (True, False)
    assert (with_mma.attn_implementation, causal.attn_implementation) == ("sdpa", "eager")
    image_prompt, text_prompt = PROMPTS[0], PROMPTS[2]
    (mma_image, _), (mma_text, _) = with_mma.loglikelihood([image_prompt, text_prompt], ["Yes", "Yes"])
    (causal_image, _), (causal_text, _) = causal.loglikelihood([image_prompt, text_prompt], ["Yes", "Yes"])
    assert abs(mma_image - causal_image) > 1e-3  # the image saw the question
    assert mma_text == pytest.approx(causal_text, abs=1e-5)  # no media: MMA is causal attention


def test_image_markers_in_the_text_place_the_images(random_aki):
    aki = runner(random_aki)
    image = solid((1, 2, 3))
    placed = Prompt("<image>\nIs there a dog?", [image]).render(aki.processor)
    assert placed == Prompt("Is there a dog?", [image]).render(aki.processor)
    with pytest.raises(ValueError, match="places 2 <image> markers but 1 images were given"):
        Prompt("<image><image> Is there a dog?", [image]).render(aki.processor)


def test_bad_arguments_are_named(random_aki):
    with pytest.raises(ValueError, match="dtype must be one of"):
        runner(random_aki, dtype="float8")
    aki = runner(random_aki)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        Runner(aki.model, aki.processor, batch_size=0)
    with pytest.raises(ValueError, match="got 2 prompts but 1 continuations"):
        aki.loglikelihood(PROMPTS[:2], ["Yes"])
