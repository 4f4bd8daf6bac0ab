"""``generate(..., mma_roles=roles)``: batched, left-padded and cached generation is exact MMA.

Scores are compared, not only tokens: a random tiny model's greedy tokens often equal the causal ones.
Every prompt ends in text; generated positions are RESPONSE. ``min_new_tokens`` keeps rows from stopping.
"""

from __future__ import annotations

import pytest
import torch

from aki.integration import CACHE_KWARG
from aki.mma import Role, parse_layout

from .tiny import (
    FAMILIES,
    FIRST_TEXT_TOKEN,
    IMAGE_TOKEN,
    IMPLEMENTATIONS,
    VLM_FAMILIES,
    VOCAB,
    batch,
    build,
    logits,
    unpadded_rows,
)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

NEW_TOKENS = 4
GENERATE = dict(
    max_new_tokens=NEW_TOKENS,
    min_new_tokens=NEW_TOKENS,
    do_sample=False,
    output_logits=True,
    return_dict_in_generate=True,
)
PROMPTS = {
    False: ["T T M M M T T T", "T M M M M M T T T T T"],
    True: ["T M M M M T T T", "T T M M M M T T T T T"],
}
CASES = [
    ("llama", "causal_stand_in"),
    ("mistral", "causal_stand_in"),
    ("llava", "causal_stand_in"),
    ("llama", "sdpa"),
    ("llama", "eager"),
    ("llama", "flex_attention"),
    ("mistral", "sdpa"),
    ("gemma3", "sdpa"),
    ("llava", "sdpa"),
    ("qwen2_vl", "sdpa"),
]


def prompts(name: str) -> tuple[dict, torch.Tensor]:
    """A left-padded batch of two prompts; generate derives the position ids from the attention mask."""
    inputs, roles = batch(name, PROMPTS[FAMILIES[name].is_vlm])
    inputs.pop("position_ids", None)
    return inputs, roles


def generated_logits(model, inputs: dict, roles: torch.Tensor | None = None, **options):
    """(sequences, logits of every step ``[B, NEW_TOKENS, V]``) of greedy generation."""
    extra = {} if roles is None else {"mma_roles": roles}
    with torch.no_grad():
        out = model.generate(**inputs, **extra, **GENERATE, **options)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize(("name", "implementation"), CASES)
def test_batched_left_padded_generation_equals_per_sample_generation(name, implementation):
    """Each row of a left-padded batch generates what it generates alone, with the same scores, not causal ones."""
    inputs, roles = prompts(name)
    model = build(name, implementation, mma=True)
    sequences, scores = generated_logits(model, inputs, roles)
    for b, (row_inputs, row_roles) in enumerate(unpadded_rows(name, inputs, roles)):
        row_inputs.pop("position_ids", None)
        row_sequences, row_scores = generated_logits(model, row_inputs, row_roles)
        torch.testing.assert_close(scores[b], row_scores[0], atol=1e-5, rtol=0)
        assert torch.equal(sequences[b, -NEW_TOKENS:], row_sequences[0, -NEW_TOKENS:])
    _, causal_scores = generated_logits(build(name), inputs)  # plain sdpa: causal scores of any backend
    assert (causal_scores[:, 0] - scores[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize(("name", "implementation"), CASES)
def test_cached_generation_equals_uncached_generation(name, implementation):
    """The KV cache built by an MMA prefill and causal decoding gives the scores of full recomputation."""
    inputs, roles = prompts(name)
    model = build(name, implementation, mma=True)
    sequences, scores = generated_logits(model, inputs, roles)
    uncached_sequences, uncached_scores = generated_logits(model, inputs, roles, use_cache=False)
    torch.testing.assert_close(uncached_scores, scores, atol=1e-5, rtol=0)
    assert torch.equal(uncached_sequences, sequences)


@pytest.mark.parametrize(("name", "implementation"), CASES)
def test_prefill_and_decode_equal_one_forward_where_generated_positions_are_response(name, implementation):
    """Generation scores are the logits of one forward over prompt + answer, the answer marked RESPONSE.

    Roles may stop at the prompt (positions past them are RESPONSE) or spell the answer out: same logits.
    """
    inputs, roles = prompts(name)
    model = build(name, implementation, mma=True)
    sequences, scores = generated_logits(model, inputs, roles)

    attention_mask = torch.nn.functional.pad(inputs["attention_mask"], (0, NEW_TOKENS), value=1)
    full = dict(inputs, input_ids=sequences, attention_mask=attention_mask)
    if name == "qwen2_vl":
        full["mm_token_type_ids"] = (sequences == IMAGE_TOKEN).int()
    else:
        full["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    spelled_out = torch.nn.functional.pad(roles, (0, NEW_TOKENS), value=int(Role.RESPONSE))
    prompt_length = roles.shape[1]
    for full_roles in (roles, spelled_out):
        forward = logits(model, full, full_roles)[:, prompt_length - 1 : -1]
        torch.testing.assert_close(forward, scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_vlm_generation_derives_roles_from_the_image_tokens(name):
    """Without ``mma_roles`` a VLM generates with MEDIA at its image tokens, TEXT elsewhere, answer RESPONSE."""
    inputs, _ = prompts(name)
    model = build(name, mma=True)
    roles = torch.where(inputs["input_ids"] == IMAGE_TOKEN, int(Role.MEDIA), int(Role.TEXT))
    derived_sequences, derived = generated_logits(model, inputs)
    explicit_sequences, explicit = generated_logits(model, inputs, roles)
    assert torch.equal(derived, explicit) and torch.equal(derived_sequences, explicit_sequences)
    _, causal = generated_logits(build(name), inputs)
    assert (causal[:, 0] - derived[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_manual_decoding_with_a_cache_takes_the_prompt_roles(name):
    """A hand-written decode loop (no attention mask) passes the prompt's roles to every step: exact MMA."""
    inputs, roles = batch(name, ["T T M M M T T T T T T T"])
    input_ids = inputs["input_ids"]
    model = build(name, mma=True)
    with torch.no_grad():
        prefill = model(input_ids=input_ids, mma_roles=roles, use_cache=True)
        next_token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        cache = {CACHE_KWARG: prefill[CACHE_KWARG]}  # `cache` (transformers >= 5.24) or `past_key_values`
        step = model(input_ids=next_token, mma_roles=roles, use_cache=True, **cache)
    full = logits(model, dict(input_ids=torch.cat([input_ids, next_token], 1)), roles)
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "implementation"), [(n, i) for n in ("llama", "gemma3") for i in IMPLEMENTATIONS]
)
def test_chunked_prefill_equals_one_forward(name, implementation):
    """A prompt prefilled in two chunks (the media and their text in the second) gives the one-pass logits."""
    roles = parse_layout("T T T T T T T T T M M T T R R R")
    input_ids = torch.randint(
        FIRST_TEXT_TOKEN, VOCAB, roles.shape, generator=torch.Generator().manual_seed(0)
    )
    model = build(name, implementation, mma=True)
    full = logits(model, dict(input_ids=input_ids), roles)
    with torch.no_grad():
        first = model(input_ids=input_ids[:, :8], mma_roles=roles[:, :8], use_cache=True)
        cache = {CACHE_KWARG: first[CACHE_KWARG]}
        second = model(input_ids=input_ids[:, 8:], mma_roles=roles, use_cache=True, **cache)
    torch.testing.assert_close(second.logits, full[:, 8:], atol=1e-5, rtol=0)
    assert (full[:, 9:11] - logits(build(name), dict(input_ids=input_ids))[:, 9:11]).abs().max() > 1e-3
