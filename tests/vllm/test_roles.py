"""Which rows the vLLM plugin recomputes in a step, from token ids alone (pure torch: runs without vLLM).

Token ids of the layouts below: 1 text, 9 image, 7 the user header, 8 the assistant header, 5 answer text.
"""

from __future__ import annotations

import pytest
import torch

from aki.mma import mma_mask, roles_from_token_ids
from aki.vllm.roles import MmaError, MmaHeaders, media_rows_of_step

HEADERS = MmaHeaders.of(9, response_starts=[8], turn_starts=[7])
# <user> img img q q <assistant> | answer ...
PROMPT = [7, 9, 9, 1, 1, 8]


def ids(*tokens: int) -> torch.Tensor:
    return torch.tensor(tokens)


def test_a_whole_prefill_recomputes_its_media_rows_over_the_prompt_through_the_assistant_header():
    (request,) = media_rows_of_step(ids(*PROMPT), [0, 6], [6], HEADERS)
    assert request.rows.tolist() == [1, 2]
    assert request.keys_start == 0
    # row 1 (first image token) sees the user header, itself, the question and <assistant>, not the later
    # image token; row 2 also sees row 1 (causal)
    assert request.mask.int().tolist() == [[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_the_rows_and_mask_are_those_of_the_dense_mma_mask():
    tokens = ids(7, 9, 9, 1, 1, 8, 5, 5, 7, 9, 1, 8)  # two turns, an image in each
    (request,) = media_rows_of_step(tokens, [0, 12], [12], HEADERS)
    dense = mma_mask(roles_from_token_ids(tokens[None], 9, response_start_ids=8, turn_start_ids=7))[0, 0]
    assert request.rows.tolist() == [1, 2, 9]
    for row, allowed in zip(request.rows.tolist(), request.mask, strict=True):
        assert allowed.tolist() == dense[row, : request.span].tolist()
        assert not dense[row, request.span :].any()
    assert request.mask[0, 6:].sum() == 0  # the first image never sees the first answer or the second turn


def test_each_request_of_a_ragged_step_gets_its_own_rows_and_keys():
    decode, second = [5], [7, 9, 1, 8]
    tokens = ids(*PROMPT, *decode, *second)
    first_rows, second_rows = media_rows_of_step(tokens, [0, 6, 7, 11], [6, 20, 4], HEADERS)
    assert first_rows.rows.tolist() == [1, 2]
    assert second_rows.rows.tolist() == [8]  # the decode request in between is causal: no rows
    assert second_rows.keys_start == 7
    assert second_rows.mask.int().tolist() == [[1, 1, 1, 1]]


def test_a_recomputed_preempted_request_has_the_rows_of_its_prompt():
    # After preemption vLLM prefills prompt + generated tokens in one step; generated tokens follow <assistant>.
    (prompt_only,) = media_rows_of_step(ids(*PROMPT), [0, 6], [6], HEADERS)
    (recomputed,) = media_rows_of_step(ids(*PROMPT, 1, 7, 1, 5), [0, 10], [10], HEADERS)
    assert torch.equal(recomputed.rows, prompt_only.rows)
    assert torch.equal(recomputed.mask, prompt_only.mask)


def test_a_generated_media_token_id_is_text_where_no_media_embedding_stands():
    recomputed = ids(*PROMPT, 1, 9, 7, 1)  # the model generated the image token id, then a user header
    is_media = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)  # vLLM's is_multimodal
    (rows,) = media_rows_of_step(recomputed, [0, 10], [10], HEADERS, is_media=is_media)
    assert rows.rows.tolist() == [1, 2]
    (taken_for_media,) = media_rows_of_step(recomputed, [0, 10], [10], HEADERS)
    assert taken_for_media.rows.tolist() == [1, 2, 7]  # what the ids alone would say


def test_steps_without_media_or_with_only_decodes_have_no_rows():
    assert media_rows_of_step(ids(7, 1, 1, 8), [0, 4], [4], HEADERS) == []
    assert media_rows_of_step(ids(5, 5), [0, 1, 2], [30, 12], HEADERS) == []
    # a caption (no assistant header) is RESPONSE throughout: media see nothing ahead, MMA equals causal
    assert media_rows_of_step(ids(9, 9, 1, 1), [0, 4], [4], HEADERS) == []


def test_a_prefill_that_does_not_start_at_position_0_is_refused_naming_mma():
    # chunked prefill's second chunk, a prefix-cache hit or a speculative verification step
    with pytest.raises(MmaError, match="MMA: request 0 of this step runs 3 tokens from position 5"):
        media_rows_of_step(ids(9, 1, 8), [0, 3], [8], HEADERS)


def test_headers_of_several_tokens_mark_the_answer_after_the_last_and_before_the_first_token():
    # LLaVA-1.5: "USER :" (7 3) ... "ASSISTANT :" (8 3); 3 alone is an ordinary colon
    headers = MmaHeaders.of(9, response_starts=[[8, 3]], turn_starts=[[7, 3]])
    tokens = torch.tensor([[7, 3, 9, 1, 3, 8, 3, 5, 5, 7, 3, 1]])
    assert headers.roles(tokens).tolist() == [[0, 0, 1, 0, 0, 0, 0, 2, 2, 0, 0, 0]]
    single = MmaHeaders.of(9, response_starts=[8], turn_starts=[7])
    assert torch.equal(
        single.roles(tokens[:, :3]), roles_from_token_ids(tokens[:, :3], 9, response_start_ids=8)
    )


def test_an_empty_header_is_refused():
    with pytest.raises(ValueError, match="an empty header"):
        MmaHeaders.of(9, response_starts=[[]])
