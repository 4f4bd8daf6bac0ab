"""The MMA rule of docs/mma.md, as aki.mma computes it.

A small layout's allow matrix is written out by hand; property tests then compare every form of the mask
(dense, additive, mask function, FlexAttention block mask) with a plain loop-based reading of the rule.
"""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aki.mma import (
    MmaLayout,
    Role,
    mma_additive_mask,
    mma_block_mask,
    mma_layout,
    mma_mask,
    mma_mask_function,
    parse_layout,
    roles_from_assistant_mask,
    roles_from_labels,
)

T, M, R = Role.TEXT, Role.MEDIA, Role.RESPONSE


def reference_allowed(roles: list[int], valid: list[bool]) -> list[list[bool]]:
    """The rule read literally, one (q, k) pair at a time. Padded query rows are left to the caller."""
    length = len(roles)
    allowed = [[False] * length for _ in range(length)]
    for q in range(length):
        for k in range(length):
            if not valid[k]:
                continue
            causal = k <= q
            mutual = (
                roles[q] == M
                and roles[k] == T
                and k > q
                and not any(roles[j] == R and valid[j] for j in range(q + 1, k + 1))
            )
            allowed[q][k] = causal or mutual
    return allowed


def check_against_reference(mask: torch.Tensor, roles: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Every valid query row of ``mask`` ([B, 1, L, L] bool) equals the loop-based rule."""
    for b in range(roles.shape[0]):
        valid = attention_mask[b].bool().tolist()
        expected = torch.tensor(reference_allowed(roles[b].tolist(), valid))
        rows = torch.tensor(valid)
        assert torch.equal(mask[b, 0][rows], expected[rows]), f"batch row {b} differs from the rule"


# ------------------------------------------------------------------ the truth table


def test_truth_table_one_image_one_turn():
    """T M M T T R R: media see the two question tokens, never the answer; media stay causal among themselves."""
    expected = torch.tensor(
        [
            # T  M  M  T  T  R  R      (keys)
            [1, 0, 0, 0, 0, 0, 0],  # T
            [1, 1, 0, 1, 1, 0, 0],  # M  sees later text, not the later media token
            [1, 1, 1, 1, 1, 0, 0],  # M
            [1, 1, 1, 1, 0, 0, 0],  # T  causal
            [1, 1, 1, 1, 1, 0, 0],  # T
            [1, 1, 1, 1, 1, 1, 0],  # R  causal
            [1, 1, 1, 1, 1, 1, 1],  # R
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mma_mask(parse_layout("T M M T T R R"))[0, 0], expected)


def test_truth_table_two_turns_stop_at_the_response():
    """Media of turn one never see across the first answer into turn two."""
    mask = mma_mask(parse_layout("M T R T M T R"))[0, 0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0],  # M sees the T before the response only
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],  # M of turn two sees its own question
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_padding_is_never_attended_and_padded_rows_stay_finite():
    roles = parse_layout("T M T T R")
    attention_mask = torch.tensor([[0, 1, 1, 1, 1]])
    mask = mma_mask(roles, attention_mask)[0, 0]
    assert not mask[1:, 0].any(), "valid queries must not see the padded key"
    assert mask.any(-1).all(), "every row, padded ones included, keeps at least one key"
    assert mask[1].tolist() == [False, True, True, True, False]


def test_without_media_the_mask_is_causal():
    roles = parse_layout("T T R T R R")
    assert torch.equal(mma_mask(roles)[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


def test_pretraining_captions_are_response_so_the_mask_is_causal():
    """<image>{caption}<|endofchunk|>: the caption is RESPONSE, nothing leaks into the image."""
    roles = parse_layout("M M M R R R R")
    assert torch.equal(mma_mask(roles)[0, 0], torch.ones(7, 7, dtype=torch.bool).tril())


def test_additive_form_is_zero_where_allowed_and_dtype_min_elsewhere():
    roles = parse_layout("T M T R")
    additive = mma_additive_mask(roles, dtype=torch.float16)
    assert additive.dtype == torch.float16
    allowed = mma_mask(roles)
    assert torch.equal(additive == 0, allowed)
    assert torch.all(additive[~allowed] == torch.finfo(torch.float16).min)


def test_positions_past_the_roles_are_response():
    """generate() passes prompt roles only; the mask function treats later positions as RESPONSE."""
    layout = mma_layout(parse_layout("T M T T"))
    function = layout.mask_function()
    q = torch.arange(7)[:, None]
    k = torch.arange(7)[None, :]
    mask = function(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), q, k)
    expected = torch.ones(7, 7, dtype=torch.bool).tril()
    expected[1, 2:4] = True  # the media token sees the two text tokens, not the generated ones
    assert torch.equal(mask, expected)


# ------------------------------------------------------------------ property tests against the loop


@st.composite
def batches(draw):
    """Random batches: several media runs, several turns, left or right padding per row."""
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 24))
    rows, masks = [], []
    for _ in range(batch):
        used = draw(st.integers(1, length))
        segments = []
        while len(segments) < used:
            role = draw(st.sampled_from([T, M, R]))
            segments += [int(role)] * draw(st.integers(1, 4))
        segments = segments[:used]
        pad = length - used
        if draw(st.booleans()):  # left padding
            rows.append([draw(st.sampled_from([0, 1, 2])) for _ in range(pad)] + segments)
            masks.append([0] * pad + [1] * used)
        else:
            rows.append(segments + [draw(st.sampled_from([0, 1, 2])) for _ in range(pad)])
            masks.append([1] * used + [0] * pad)
    return torch.tensor(rows), torch.tensor(masks)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_dense_mask_equals_the_rule(batch):
    roles, attention_mask = batch
    check_against_reference(mma_mask(roles, attention_mask), roles, attention_mask)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_mask_function_equals_the_dense_mask(batch):
    roles, attention_mask = batch
    function = mma_mask_function(roles, attention_mask)
    size, length = roles.shape
    b = torch.arange(size)[:, None, None, None]
    q = torch.arange(length)[None, None, :, None]
    k = torch.arange(length)[None, None, None, :]
    assert torch.equal(function(b, torch.zeros_like(b), q, k), mma_mask(roles, attention_mask))


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from([2, 4, 8]))
def test_block_mask_equals_the_dense_mask(batch, block_size):
    """The block-sparse form keeps every allowed pair and evaluates the rule inside kept blocks."""
    roles, attention_mask = batch
    block_mask = mma_block_mask(roles, attention_mask, block_size=block_size)
    dense = block_mask.to_dense()  # block granularity: 1 where the block is kept
    allowed = mma_mask(roles, attention_mask) & attention_mask.bool()[:, None, :, None]  # valid query rows
    length = roles.shape[1]
    blocks = -(-length // block_size)
    padded = torch.nn.functional.pad(
        allowed, (0, blocks * block_size - length, 0, blocks * block_size - length)
    )
    any_allowed = padded.view(roles.shape[0], 1, blocks, block_size, blocks, block_size).any(-1).any(-2)
    assert torch.all(dense.bool() | ~any_allowed), "a block holding an allowed pair was dropped"


def test_flex_attention_with_the_block_mask_equals_sdpa_with_the_dense_mask():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    roles = torch.cat(
        [parse_layout("T" * 5 + "M" * 20 + "T" * 10 + "R" * 13), parse_layout("TM" * 12 + "R" * 24)]
    )
    attention_mask = torch.ones_like(roles)
    attention_mask[1, -5:] = 0
    query, key, value = (torch.randn(2, 2, 48, 8) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mma_mask(roles, attention_mask)
    )
    got = flex_attention(query, key, value, block_mask=mma_block_mask(roles, attention_mask, block_size=16))
    valid = attention_mask.bool()[:, None, :, None].expand_as(expected)
    assert torch.allclose(got[valid], expected[valid], atol=1e-5)


# ------------------------------------------------------------------ consequences


@settings(max_examples=80, deadline=None)
@given(batches())
def test_no_query_before_a_response_sees_it_or_anything_after(batch):
    """No leakage: the mask row of any position before a RESPONSE r is False at r and everything after."""
    roles, attention_mask = batch
    mask = mma_mask(roles, attention_mask)
    for b in range(roles.shape[0]):
        valid = attention_mask[b].bool()
        for r in (roles[b] == R).logical_and(valid).nonzero().flatten().tolist():
            earlier = valid.clone()
            earlier[r:] = False
            assert not mask[b, 0][earlier][:, r:].any()


@settings(max_examples=60, deadline=None)
@given(batches())
def test_padding_does_not_change_valid_rows(batch):
    """Removing the padding leaves each valid row's pattern over valid keys unchanged."""
    roles, attention_mask = batch
    mask = mma_mask(roles, attention_mask)
    for b in range(roles.shape[0]):
        valid = attention_mask[b].bool()
        alone = mma_mask(roles[b][valid][None])[0, 0]
        assert torch.equal(mask[b, 0][valid][:, valid], alone)


# ------------------------------------------------------------------ roles from what users have


def test_roles_from_labels_marks_media_and_labelled_positions():
    input_ids = torch.tensor([[5, 9, 9, 6, 7, 8, 2]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 8, 2]])
    roles = roles_from_labels(input_ids, media_token_ids=9, labels=labels)
    assert roles.tolist() == [[T, M, M, T, T, R, R]]
    assert roles_from_labels(input_ids, [9, 6]).tolist() == [[T, M, M, M, T, T, T]]


def test_roles_from_assistant_mask():
    input_ids = torch.tensor([[1, 9, 9, 4, 5, 6]])
    assistant = torch.tensor([[0, 0, 0, 0, 1, 1]])
    assert roles_from_assistant_mask(input_ids, assistant, media_token_ids=[9]).tolist() == [
        [T, M, M, T, R, R]
    ]


def test_a_labelled_media_position_is_refused():
    with pytest.raises(ValueError, match="media token position carries a label"):
        roles_from_labels(torch.tensor([[9, 4]]), 9, labels=torch.tensor([[9, 4]]))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("roles", "error", "match"),
    [
        (torch.zeros(4, dtype=torch.long), ValueError, r"shape \[batch, length\], got shape \(4,\)"),
        (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, r"got shape \(1, 2, 3\)"),
        (torch.zeros(1, 4), TypeError, "integer tensor.*float32"),
        (torch.zeros(1, 4, dtype=torch.bool), TypeError, "integer tensor.*bool"),
        (torch.tensor([[0, 1, 3, -1]]), ValueError, r"unknown role values \[-1, 3\]"),
        ([[0, 1]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_roles_are_refused_with_a_message_that_names_the_problem(roles, error, match):
    with pytest.raises(error, match=match):
        mma_mask(roles)


def test_roles_longer_than_the_attention_mask_are_refused():
    with pytest.raises(
        ValueError, match=r"roles of shape \(1, 5\) do not fit attention_mask of shape \(1, 4\)"
    ):
        mma_mask(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 4))


def test_parse_layout_refuses_unknown_letters():
    with pytest.raises(ValueError, match=r"unknown role letters \['X'\]"):
        parse_layout("T X M")


def test_layout_metadata_is_linear_in_length():
    layout = mma_layout(torch.zeros(2, 1000, dtype=torch.long))
    assert isinstance(layout, MmaLayout)
    assert all(t.shape == (2, 1000) for t in (layout.valid, layout.key_is_text, layout.media_end))


def test_the_core_imports_no_hugging_face_code():
    code = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('mma', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'huggingface_hub', 'accelerate')]; "
        "assert not bad, bad"
    )
    import aki.mma

    subprocess.run([sys.executable, "-c", code, aki.mma.__file__], check=True)


def test_media_do_not_see_into_the_next_packed_sequence():
    """A packed-sequence start stops media like a response does: ``T M T | T T`` packed in one row."""
    roles = parse_layout("T M T T T")
    starts = torch.tensor([[False, False, False, True, False]])
    layout = mma_layout(roles, sequence_starts=starts)
    assert layout.dense()[0, 0, 1].tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match=r"sequence_starts of shape \(1, 4\) do not match roles"):
        mma_layout(roles, sequence_starts=starts[:, :4])
