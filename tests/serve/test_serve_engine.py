"""The batching engine: batched answers equal lone ``model.generate`` answers; per-row stops, limits, MMA."""

from __future__ import annotations

import pytest
from serve_helpers import QUESTION, noise_image, user

from aki.serve import Engine, InputError, Limits, SamplingParams

CHATS = [
    [user("What is this?", noise_image(1))],
    [user("Describe the image.")],
    [user("How many shapes are there? Describe the image.", noise_image(2, (64, 20)))],
    [user(QUESTION, noise_image(3)), {"role": "assistant", "content": "red"}, user("And where is it?")],
    [{"role": "system", "content": "Answer briefly."}, user("What is this?", noise_image(4))],
]


def run_together(engine, requests):
    """Submit ``(messages, params, mma)`` requests in one loop, so that they meet in the engine's window."""
    generations = [engine.submit(messages, params, mma=mma) for messages, params, mma in requests]
    return [generation.result() for generation in generations]


def test_one_batch_of_chats_answers_each_as_if_alone(engine, reference):
    before = engine.stats.prefills.copy()
    params = SamplingParams(max_new_tokens=12)
    completions = run_together(engine, [(chat, params, True) for chat in CHATS])
    assert engine.stats.prefills - before == {len(CHATS): 1}  # one prefill for all five
    prompt_lengths = {len(engine.encode(chat)["input_ids"][0]) for chat in CHATS}
    assert len(prompt_lengths) == len(CHATS)  # all different: the batch really was left-padded
    for chat, completion in zip(CHATS, completions, strict=True):
        assert completion.text == reference(chat, 12)
        assert completion.text  # the fixture's model answers with words, not an immediate end of sequence
        assert completion.finish_reason == "length"
        assert completion.completion_tokens == 12
        assert completion.prompt_tokens == len(engine.encode(chat)["input_ids"][0])


def test_each_row_keeps_its_own_token_limit_and_stop_strings(engine, reference):
    chat = CHATS[0]
    full = reference(chat, 12)
    three = reference(chat, 3)
    stop = full[len(three) - 1 : len(three) + 2]  # spans the end of token 3 and what follows it
    cut = full[: full.index(stop)]
    completions = run_together(
        engine,
        [
            (chat, SamplingParams(max_new_tokens=3), True),
            (chat, SamplingParams(max_new_tokens=12, stop=(stop, "never said")), True),
            (chat, SamplingParams(max_new_tokens=12), True),
        ],
    )
    assert [c.text for c in completions] == [three, cut, full]
    assert [c.finish_reason for c in completions] == ["length", "stop", "length"]
    assert completions[0].completion_tokens == 3


def test_streamed_pieces_never_show_part_of_a_stop_string(engine, reference):
    chat = CHATS[2]
    full = reference(chat, 12)
    three = reference(chat, 3)
    stop = full[len(three) - 1 : len(three) + 2]
    generation = engine.submit(chat, SamplingParams(max_new_tokens=12, stop=(stop,)))
    pieces = list(generation)
    # Pieces are never taken back: joined, they are exactly the answer cut before the stop string.
    assert "".join(pieces) == generation.completion.text == full[: full.index(stop)]

    plain = engine.submit(chat, SamplingParams(max_new_tokens=12))
    pieces = list(plain)
    assert len(pieces) > 1 and "".join(pieces) == full  # streamed as it grows, one token at a time


def test_mma_is_chosen_per_request_and_both_kinds_share_the_window(engine, reference):
    chat = [user(QUESTION, noise_image(0))]
    with_mma, causal = reference(chat, 12, mma=True), reference(chat, 12, mma=False)
    assert with_mma != causal  # MMA changes this answer: the check below can tell them apart
    before = engine.stats.prefills.copy(), engine.stats.steps.copy()
    params = SamplingParams(max_new_tokens=12)
    completions = run_together(engine, [(chat, params, True), (chat, params, False), (chat, params, True)])
    assert [c.text for c in completions] == [with_mma, causal, with_mma]
    assert engine.stats.prefills - before[0] == {2: 1, 1: 1}  # MMA rows prefilled together, causal alone
    assert set(engine.stats.steps - before[1]) == {3}  # then all three decode together (causal: RESPONSE)


def test_sampled_and_greedy_requests_share_a_batch_and_greedy_stays_exact(engine, reference):
    chat = CHATS[1]
    before = engine.stats.prefills.copy()
    completions = run_together(
        engine,
        [
            (chat, SamplingParams(max_new_tokens=6), True),
            (chat, SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9), True),
            (chat, SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9), True),
            (chat, SamplingParams(max_new_tokens=6), True),
        ],
    )
    assert engine.stats.prefills - before == {4: 1}  # each row samples with its own settings
    assert completions[0].text == completions[3].text == reference(chat, 6)
    assert all(c.completion_tokens <= 6 for c in completions)


def test_a_cancelled_request_stops_without_disturbing_its_batch(engine, reference):
    chat = CHATS[0]
    long, other = (
        engine.submit(chat, SamplingParams(max_new_tokens=40)),
        engine.submit(chat, SamplingParams(max_new_tokens=12)),
    )
    first = next(iter(long))
    long.cancel()
    rest = list(long)
    assert long.completion.finish_reason == "cancelled"
    assert long.completion.completion_tokens < 40
    assert first + "".join(rest) == long.completion.text
    assert other.result().text == reference(chat, 12)

    queued = engine.submit(chat, SamplingParams(max_new_tokens=12))
    queued.cancel()  # within the batch window: the request never reaches the model
    assert queued.result().finish_reason == "cancelled"
    assert queued.completion.completion_tokens <= 1


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(engine, reference, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(engine.model, "forward", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        engine.generate(CHATS[1], SamplingParams(max_new_tokens=4))
    monkeypatch.undo()
    assert engine.generate(CHATS[1], SamplingParams(max_new_tokens=4)).text == reference(CHATS[1], 4)


@pytest.mark.parametrize(
    ("messages", "params", "message"),
    [
        ([], None, "messages is empty"),
        ([user("hi"), {"role": "assistant", "content": "hello"}], None, "must be the user's question"),
        ([user("hi"), {"role": "system", "content": "x"}, user("hi")], None, "only the first message"),
        ([{"role": "tool", "content": "x"}], None, "has role 'tool'"),
        ([{"role": "user", "content": [{"type": "audio"}]}], None, "has type 'audio'"),
        (
            [user("hi"), {"role": "assistant", "content": [{"type": "image", "image": None}]}, user("x")],
            None,
            "only users",
        ),
        ([user(" ".join(["What is this?"] * 60))], None, "above the limit of 400"),
        ([user("hi", *[noise_image(i) for i in range(9)])], None, "9 images, above the limit of 8"),
        ([user("hi")], SamplingParams(max_new_tokens=2000), "above this server's limit of 1024"),
        ([user("hi")], SamplingParams(max_new_tokens=1000), "context of 1024 tokens"),
    ],
)
def test_requests_that_break_the_rules_are_refused_by_name(engine, messages, params, message):
    with pytest.raises(InputError, match=message):
        engine.submit(messages, params)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": 2.5}, "temperature must be in"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"stop": ("",)}, "non-empty strings"),
    ],
)
def test_sampling_params_are_checked(fields, message):
    with pytest.raises(InputError, match=message):
        SamplingParams(**fields)


def test_a_short_request_joins_a_running_long_one_and_leaves_first(engine, reference):
    long_chat, short_chat = [user(QUESTION, noise_image(0))], CHATS[1]
    long = engine.submit(long_chat, SamplingParams(max_new_tokens=400))  # no end of sequence before 400
    pieces = iter(long)
    first = next(pieces)
    before = engine.stats.prefills.copy()
    short = engine.generate(short_chat, SamplingParams(max_new_tokens=2))
    assert long.completion is None  # the long one still runs: the short one did not wait for it
    assert short.text == reference(short_chat, 2)
    assert engine.stats.prefills - before == {1: 1}  # admitted alone, between two steps of the long one
    assert first + "".join(pieces) == reference(long_chat, 400)  # and the long answer is unchanged


def test_without_max_tokens_an_answer_may_fill_the_rest_of_the_context(engine):
    """As vLLM: no max_tokens means what the context leaves, within the limit (not a fixed default)."""

    def chat(repeats: int) -> list[dict]:
        return [user(" ".join(["What is this?"] * repeats))]

    with Engine(engine.model, engine.processor, limits=Limits(max_prompt_tokens=2048)) as roomy:
        repeats = next(n for n in range(100, 200) if len(roomy.encode(chat(n))["input_ids"][0]) >= 1000)
        prompt = len(roomy.encode(chat(repeats))["input_ids"][0])
        completion = roomy.generate(chat(repeats), SamplingParams(max_new_tokens=None))
        assert completion.completion_tokens <= 1024 - prompt
        assert completion.finish_reason == "stop" or completion.completion_tokens == 1024 - prompt
        with pytest.raises(InputError, match="tokens: it fills the model's context of 1024"):
            roomy.submit(chat(2 * repeats), SamplingParams(max_new_tokens=None))
