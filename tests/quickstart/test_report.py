"""Intervals, summary rows and the table of the quickstart report, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from aki.quickstart.report import (
    markdown_table,
    paired_interval,
    summarise,
    t_interval,
    table_rows,
    wilson_interval,
)


def test_wilson_interval_of_8_in_10():
    # centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10), z = 1.96
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.490157, 0.943319), abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)


def test_t_interval_of_three_seeds():
    # mean 0.7, sd 0.1, t(0.975, 2 df) = 4.303: half-width 4.303 * 0.1 / sqrt(3)
    mean, low, high = t_interval([0.6, 0.7, 0.8])
    half = 4.303 * 0.1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.7, 0.7 - half, 0.7 + half))
    with pytest.raises(ValueError, match="at least two values"):
        t_interval([0.5])


def test_paired_interval_of_per_question_differences():
    # differences 0, 1, 0, 0: mean 0.25, sd 0.5, half-width 1.96 * 0.5 / 2 = 0.49
    assert paired_interval([True, False, False, True], [True, True, False, True]) == pytest.approx(
        (0.25, -0.24, 0.74)
    )
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_interval([True], [True, False])


def _outcomes(seeds_to_answers):
    """``{(latents, seed, arm): {family: answers}}`` for one family "a" and "overall" equal to it."""
    return {
        (4, seed, arm): {"a": answers, "overall": answers}
        for (seed, arm), answers in seeds_to_answers.items()
    }


def test_one_seed_rows_use_the_test_questions():
    outcomes = _outcomes({(0, "causal"): [True, False, False, True], (0, "mma"): [True, True, False, True]})
    runs = [{"latents": 4, "seed": 0, "arm": arm} for arm in ("causal", "mma")]
    rows = summarise(
        runs, outcomes, families=["a"], chance={"a": 0.5, "overall": 0.5}, arms=["causal", "mma"]
    )
    assert [row["family"] for row in rows] == ["a", "overall"]
    row = rows[0]
    assert row["chance"] == 0.5
    assert row["causal"]["mean"] == 0.5 and row["mma"]["mean"] == 0.75
    assert (row["mma"]["low"], row["mma"]["high"]) == pytest.approx(wilson_interval(3, 4))
    assert (row["delta_mma"]["mean"], row["delta_mma"]["low"], row["delta_mma"]["high"]) == pytest.approx(
        (0.25, -0.24, 0.74)
    )


def test_several_seeds_use_student_t_over_seeds_paired_for_the_delta():
    outcomes = _outcomes(
        {
            (0, "causal"): [True, False],  # 0.5
            (1, "causal"): [True, True],  # 1.0
            (0, "mma"): [True, True],  # 1.0: delta +0.5
            (1, "mma"): [True, True],  # 1.0: delta 0.0
        }
    )
    runs = [{"latents": 4, "seed": s, "arm": a} for s in (0, 1) for a in ("causal", "mma")]
    row = summarise(
        runs, outcomes, families=["a"], chance={"a": 0.5, "overall": 0.5}, arms=["causal", "mma"]
    )[0]
    # causal: mean 0.75, sd sqrt(0.125), t(1 df) = 12.706, half-width 12.706 * sqrt(0.125) / sqrt(2) = 3.1765
    assert (row["causal"]["mean"], row["causal"]["low"], row["causal"]["high"]) == pytest.approx(
        (0.75, 0.75 - 3.1765, 0.75 + 3.1765)
    )
    assert (row["mma"]["low"], row["mma"]["high"]) == (1.0, 1.0)  # no spread over seeds
    assert row["delta_mma"]["mean"] == pytest.approx(0.25)
    assert row["delta_mma"]["high"] - row["delta_mma"]["mean"] == pytest.approx(3.1765)


def test_table_rows_and_markdown():
    results = {
        "arms": ["causal", "mma"],
        "summary": [
            {
                "latents": 8,
                "family": "spatial",
                "chance": 0.5,
                "causal": {"mean": 0.61, "low": 0.5, "high": 0.7},
                "mma": {"mean": 0.655, "low": 0.55, "high": 0.75},
                "delta_mma": {"mean": 0.045, "low": -0.0123, "high": 0.1},
            },
            {"latents": 16, "family": "spatial"},  # another budget: not in the table of 8
        ],
    }
    header, rows = table_rows(results, 8)
    assert header == ["family", "chance", "causal", "MMA", "Δ MMA [95 % CI]"]
    assert rows == [["spatial", "0.500", "0.610", "0.655", "+0.045 [-0.012, +0.100]"]]
    assert markdown_table(results, 8).splitlines() == [
        "| family | chance | causal | MMA | Δ MMA [95 % CI] |",
        "|---|---|---|---|---|",
        "| spatial | 0.500 | 0.610 | 0.655 | +0.045 [-0.012, +0.100] |",
    ]
