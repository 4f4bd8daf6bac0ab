"""Offline scorers: hand-computed fixtures for CV-Bench, POPE, MME and MMBench, file formats and the CLI."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from aki.eval.cli import app
from aki.eval.scorers import (
    answers_match,
    assign_ids,
    compare_results,
    extract_choice,
    extract_yes_no,
    normalise_answer,
    predictions_from_records,
    read_predictions,
    score,
    score_cvbench,
    score_mmbench,
    score_mme,
    score_pope,
    write_results,
)
from aki.io import read_records

# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "letters", "expected"),
    [
        ("B", "ABCD", ("B", None)),
        ("(B)", "ABCD", ("B", None)),
        ("B.", "ABCD", ("B", None)),
        ("b", "ABCD", ("B", None)),
        ("**C**", "ABCD", ("C", None)),
        ("The answer is B", "ABCD", ("B", None)),
        ("B) cat", "ABCD", ("B", None)),
        ("Answer: (D) a dog", "ABCD", ("D", None)),
        ("B. B is the only red one.", "ABCD", ("B", None)),
        ("A and C", "ABCD", (None, "several_letters")),
        ("AB", "ABCD", (None, "several_letters")),
        ("It is (A), or maybe (B)", "ABCD", (None, "several_letters")),
        ("cat", "ABCD", (None, "no_letter")),
        ("", "ABCD", (None, "no_letter")),
        ("the answer is b", "ABCD", (None, "no_letter")),
        ("E", "ABCD", (None, "no_letter")),
        ("E", "ABCDE", ("E", None)),
        ("C", "AB", (None, "no_letter")),
    ],
)
def test_extract_choice(text: str, letters: str, expected: tuple[str | None, str | None]) -> None:
    assert tuple(extract_choice(text, letters=letters)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", ("yes", None)),
        ("no.", ("no", None)),
        ("  YES, there is a dog.", ("yes", None)),
        ("No, there is not.", ("no", None)),
        ("\n**No**", ("no", None)),
        ("There is no dog.", (None, "not_yes_no")),
        ("Yesterday", (None, "not_yes_no")),
        ("", (None, "not_yes_no")),
    ],
)
def test_extract_yes_no(text: str, expected: tuple[str | None, str | None]) -> None:
    assert tuple(extract_yes_no(text)) == expected


# ----------------------------------------------------------------------------- CV-Bench


def _cv(idx: int, kind: str, task: str, source: str, n_choices: int, answer: str) -> dict:
    choices = [f"option {i}" for i in range(n_choices)]
    return {
        "idx": idx,
        "type": kind,
        "task": task,
        "source": source,
        "question": "?",
        "choices": choices,
        "answer": answer,
    }


CVBENCH_ANSWERS = [
    _cv(0, "2D", "Count", "ADE20K", 4, "(B)"),
    _cv(1, "2D", "Count", "ADE20K", 4, "(A)"),
    _cv(2, "2D", "Relation", "ADE20K", 2, "(A)"),
    _cv(3, "2D", "Relation", "ADE20K", 2, "(B)"),
    _cv(4, "2D", "Count", "COCO", 4, "(C)"),
    _cv(5, "2D", "Relation", "COCO", 2, "(A)"),
    _cv(6, "3D", "Depth", "Omni3D", 2, "(A)"),
    _cv(7, "3D", "Depth", "Omni3D", 2, "(B)"),
    _cv(8, "3D", "Distance", "Omni3D", 2, "(A)"),
    _cv(9, "3D", "Distance", "Omni3D", 2, "(B)"),
]
CVBENCH_PREDICTIONS = {
    0: "(B)",  # right
    1: "A. 0",  # right
    2: "The answer is A",  # right
    3: "C",  # only two choices: no letter, wrong   -> ADE20K 3/4
    4: "C",  # right
    5: "B) right",  # wrong                         -> COCO 1/2
    6: "A",  # right
    7: "B.",  # right
    8: "A and B",  # several letters, wrong
    # 9 missing, wrong                              -> Omni3D 2/4
    42: "A",  # not in the answers: reported, ignored
}


def test_cvbench_hand_computed() -> None:
    results = score_cvbench(CVBENCH_PREDICTIONS, CVBENCH_ANSWERS)
    metrics = results["metrics"]
    assert metrics["source/ADE20K"] == 0.75
    assert metrics["source/COCO"] == 0.5
    assert metrics["source/Omni3D"] == 0.5
    assert metrics["2d"] == 0.625  # mean of the two sources, not 4/6 pooled
    assert metrics["3d"] == 0.5
    assert metrics["overall"] == 0.5625  # not the pooled 6/10
    assert metrics["task/Count"] == 1.0
    assert metrics["task/Relation"] == pytest.approx(1 / 3)
    assert metrics["task/Depth"] == 1.0
    assert metrics["task/Distance"] == 0.0
    assert results["malformed"] == {"3": "no_letter", "8": "several_letters"}
    assert results["missing"] == ["9"]
    assert results["extra"] == ["42"]
    assert results["counts"] == {
        "answers": 10,
        "predictions": 10,
        "correct": 6,
        "malformed": 2,
        "missing": 1,
        "extra": 1,
        "source/ADE20K": 4,
        "source/COCO": 2,
        "source/Omni3D": 4,
    }


def test_cvbench_without_3d_rows_reports_2d_only() -> None:
    metrics = score("CV-Bench", {0: "B", 4: "A"}, [CVBENCH_ANSWERS[0], CVBENCH_ANSWERS[4]])["metrics"]
    assert metrics["2d"] == 0.5  # mean(ADE20K 1.0, COCO 0.0)
    assert "3d" not in metrics
    assert "overall" not in metrics


# ----------------------------------------------------------------------------- POPE


def _pope(question_id: int, answer: str, category: str) -> dict:
    return {
        "question_id": question_id,
        "question": "Is there a dog?",
        "answer": answer,
        "category": category,
        "image": "x.jpg",
    }


POPE_ANSWERS = [
    *(_pope(i, "yes", "random") for i in (1, 2, 3, 4)),
    *(_pope(i, "no", "random") for i in (5, 6, 7, 8)),
    _pope(9, "yes", "popular"),
    _pope(10, "yes", "popular"),
    _pope(11, "no", "popular"),
    _pope(12, "no", "popular"),
    _pope(13, "no", "adversarial"),
]
POPE_PREDICTIONS = {
    1: "Yes",  # TP
    2: "yes.",  # TP
    3: "Yes, there is a dog.",  # TP
    4: "I think so",  # malformed on a yes row: FN
    5: "No",  # TN
    6: "no",  # TN
    7: "No, there is not.",  # TN
    8: "There is no cat.",  # malformed on a no row: wrong, not a yes
    9: "Yes",  # TP
    # 10 missing: FN
    11: "Yes",  # FP
    12: "No",  # TN
    13: "no",  # TN
}


def test_pope_hand_computed() -> None:
    results = score_pope(POPE_PREDICTIONS, POPE_ANSWERS)
    metrics, counts = results["metrics"], results["counts"]
    # random: TP 3, FN 1, FP 0, TN 3, one malformed "no" row
    assert [counts[f"random/{name}"] for name in ("tp", "fp", "tn", "fn")] == [3, 0, 3, 1]
    assert metrics["random/accuracy"] == 0.75  # 6 / 8
    assert metrics["random/precision"] == 1.0  # 3 / 3
    assert metrics["random/recall"] == 0.75  # 3 / 4
    assert metrics["random/f1"] == pytest.approx(6 / 7)
    assert metrics["random/yes_ratio"] == 0.375  # 3 / 8
    # popular: TP 1, FN 1 (missing), FP 1, TN 1
    for name in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert metrics[f"popular/{name}"] == 0.5
    # adversarial: one TN, no yes predicted and no yes answer: precision and recall are 0 by convention
    assert metrics["adversarial/accuracy"] == 1.0
    assert metrics["adversarial/precision"] == 0.0
    assert metrics["adversarial/recall"] == 0.0
    assert metrics["adversarial/f1"] == 0.0
    assert metrics["adversarial/yes_ratio"] == 0.0
    # all 13 rows: TP 4, FP 1, TN 5, FN 2
    assert metrics["all/accuracy"] == pytest.approx(9 / 13)
    assert metrics["all/precision"] == 0.8
    assert metrics["all/recall"] == pytest.approx(4 / 6)
    assert metrics["all/f1"] == pytest.approx(8 / 11)
    assert metrics["all/yes_ratio"] == pytest.approx(5 / 13)
    assert results["malformed"] == {"4": "not_yes_no", "8": "not_yes_no"}
    assert results["missing"] == ["10"]
    assert results["extra"] == []
    assert counts["correct"] == 9
    assert [name.split("/")[0] for name in metrics][::5] == ["random", "popular", "adversarial", "all"]


def test_pope_comma_separated_category_counts_in_each_split() -> None:
    answers = [_pope(1, "yes", "random,popular"), _pope(2, "no", "popular")]
    results = score_pope({1: "yes", 2: "yes"}, answers)
    assert results["counts"]["random/questions"] == 1
    assert results["counts"]["popular/questions"] == 2
    assert results["counts"]["all/questions"] == 2
    assert results["metrics"]["random/accuracy"] == 1.0
    assert results["metrics"]["popular/accuracy"] == 0.5


def test_pope_answer_that_is_not_yes_or_no_is_a_data_error() -> None:
    with pytest.raises(ValueError, match=r"answer row '1': answer 'maybe' is not yes or no"):
        score_pope({1: "yes"}, [_pope(1, "maybe", "random")])


# ----------------------------------------------------------------------------- MME


def _mme(category: str, image: str, answer: str) -> dict:
    return {"question_id": f"{category}/{image}", "question": "?", "answer": answer, "category": category}


# lmms-lab layout: both questions of an image share its name as question_id -> ids "#0" and "#1"
MME_ANSWERS = [
    _mme("existence", "1.jpg", "Yes"),
    _mme("existence", "1.jpg", "No"),
    _mme("existence", "2.jpg", "Yes"),
    _mme("existence", "2.jpg", "No"),
    _mme("count", "1.jpg", "Yes"),
    _mme("count", "1.jpg", "No"),
    _mme("OCR", "1.jpg", "Yes"),
    _mme("OCR", "1.jpg", "No"),
    _mme("code_reasoning", "0020.png", "Yes"),
    _mme("code_reasoning", "0020.png", "No"),
    _mme("code_reasoning", "0021.png", "Yes"),
    _mme("code_reasoning", "0021.png", "No"),
]
MME_PREDICTIONS = {
    "existence/1.jpg#0": "Yes",
    "existence/1.jpg#1": "No",
    "existence/2.jpg#0": "Yes",
    "existence/2.jpg#1": "Yes",  # wrong: existence acc 3/4, acc+ 1/2 -> 125
    "count/1.jpg#0": "Yes",
    "count/1.jpg#1": "No",  # count acc 1, acc+ 1 -> 200
    "OCR/1.jpg#0": "Yes",
    "OCR/1.jpg#1": "The text says no",  # malformed: OCR acc 1/2, acc+ 0 -> 50
    "code_reasoning/0020.png#0": "yes",
    "code_reasoning/0020.png#1": "no",
    # code_reasoning/0021.png#0 missing: acc 3/4, acc+ 1/2 -> 125
    "code_reasoning/0021.png#1": "No.",
}


def test_mme_hand_computed() -> None:
    results = score_mme(MME_PREDICTIONS, MME_ANSWERS)
    metrics = results["metrics"]
    assert metrics["existence/acc"] == 0.75
    assert metrics["existence/acc_plus"] == 0.5
    assert metrics["existence/score"] == 125.0
    assert metrics["count/score"] == 200.0
    assert metrics["OCR/acc"] == 0.5
    assert metrics["OCR/acc_plus"] == 0.0
    assert metrics["OCR/score"] == 50.0
    assert metrics["code_reasoning/score"] == 125.0
    assert metrics["perception"] == 375.0
    assert metrics["cognition"] == 125.0
    assert list(metrics)[:2] == ["perception", "cognition"]
    assert results["malformed"] == {"OCR/1.jpg#1": "not_yes_no"}
    assert results["missing"] == ["code_reasoning/0021.png#0"]
    assert results["counts"]["existence/images"] == 2
    assert results["counts"]["correct"] == 9


def test_mme_acc_plus_groups_images_within_a_subtask() -> None:
    # VLMEvalKit layout: unique index, image_path shared by two subtasks that must not be merged
    answers = [
        {"index": 0, "image_path": "a.jpg", "answer": "Yes", "category": "existence"},
        {"index": 1, "image_path": "a.jpg", "answer": "No", "category": "existence"},
        {"index": 2, "image_path": "a.jpg", "answer": "Yes", "category": "color"},
        {"index": 3, "image_path": "a.jpg", "answer": "No", "category": "color"},
    ]
    metrics = score_mme({0: "Yes", 1: "No", 2: "No", 3: "No"}, answers)["metrics"]
    assert metrics["existence/score"] == 200.0
    assert metrics["color/acc"] == 0.5
    assert metrics["color/acc_plus"] == 0.0
    assert metrics["perception"] == 250.0
    assert "cognition" not in metrics


# ----------------------------------------------------------------------------- MMBench


def _mmb(index: int, answer: str, category: str, l2: str, options: str = "ABCD") -> dict:
    row = {"index": index, "question": "?", "answer": answer, "category": category, "l2-category": l2}
    row.update({letter: f"option {letter}" if letter in options else "" for letter in "ABCD"})
    return row


MMBENCH_ANSWERS = [
    # group 0: four rotations, all right -> passes
    _mmb(0, "A", "ocr", "perception"),
    _mmb(1_000_000, "B", "ocr", "perception"),
    _mmb(2_000_000, "C", "ocr", "perception"),
    _mmb(3_000_000, "D", "ocr", "perception"),
    # group 1: one rotation missing -> fails
    _mmb(1, "C", "ocr", "perception"),
    _mmb(1_000_001, "D", "ocr", "perception"),
    _mmb(2_000_001, "A", "ocr", "perception"),
    _mmb(3_000_001, "B", "ocr", "perception"),
    # group 2: two options, two rotations, both right -> passes
    _mmb(2, "A", "ocr", "reasoning", options="AB"),
    _mmb(1_000_002, "B", "ocr", "reasoning", options="AB"),
    # group 3: several letters -> fails
    _mmb(3, "B", "counting", "reasoning", options="ABC"),
    # group 4: C is not an option here (NaN and None mark absent options) -> fails
    {**_mmb(4, "A", "counting", "reasoning", options="AB"), "C": float("nan"), "D": None},
]
MMBENCH_PREDICTIONS = {
    0: "A",
    1_000_000: "B",
    2_000_000: "(C)",
    3_000_000: "D.",
    1: "C",
    1_000_001: "D",
    3_000_001: "B",
    2: "A",
    1_000_002: "The answer is B",
    3: "AB",
    4: "C",
}


def test_mmbench_circular_hand_computed() -> None:
    results = score_mmbench(MMBENCH_PREDICTIONS, MMBENCH_ANSWERS)
    metrics = results["metrics"]
    assert metrics["overall"] == 0.4  # groups 0 and 2 of 5
    assert metrics["row_accuracy"] == 0.75  # 9 of 12 rows
    assert metrics["category/ocr"] == pytest.approx(2 / 3)
    assert metrics["category/counting"] == 0.0
    assert metrics["l2-category/perception"] == 0.5
    assert metrics["l2-category/reasoning"] == pytest.approx(1 / 3)
    assert results["counts"]["groups"] == 5
    assert results["counts"]["groups_correct"] == 2
    assert results["malformed"] == {"3": "several_letters", "4": "no_letter"}
    assert results["missing"] == ["2000001"]


def test_mmbench_explicit_group_column_wins_over_index() -> None:
    answers = [
        {**_mmb(10, "A", "ocr", "perception"), "g_index": 7},
        {**_mmb(11, "B", "ocr", "perception"), "g_index": 7},
        {**_mmb(12, "C", "ocr", "perception"), "g_index": 8},
    ]
    results = score_mmbench({10: "A", 11: "B", 12: "D"}, answers)
    assert results["metrics"]["overall"] == 0.5
    assert results["counts"]["groups"] == 2


# ----------------------------------------------------------------------------- malformed input never crashes


def test_odd_prediction_values_are_scored_wrong_not_raised() -> None:
    answers = [_pope(i, "yes", "random") for i in (1, 2, 3)]
    results = score_pope({1: None, 2: 17, "3": "  "}, answers)
    assert results["metrics"]["random/accuracy"] == 0.0
    assert results["malformed"] == {"1": "not_yes_no", "2": "not_yes_no", "3": "not_yes_no"}


def test_no_predictions_at_all_scores_zero_and_lists_every_id() -> None:
    results = score_mmbench({}, MMBENCH_ANSWERS[:4])
    assert results["metrics"]["overall"] == 0.0
    assert results["missing"] == ["0", "1000000", "2000000", "3000000"]


def test_unknown_benchmark_and_empty_answers_raise() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'vqav2'"):
        score("vqav2", {}, [])
    with pytest.raises(ValueError, match="no answer rows"):
        score("pope", {}, [])


# ----------------------------------------------------------------------------- files and ids


def test_assign_ids_suffixes_repeats_and_is_idempotent() -> None:
    rows = assign_ids([{"question_id": "a.png"}, {"question_id": "a.png"}, {"question_id": 3.0}])
    assert [row["id"] for row in rows] == ["a.png#0", "a.png#1", "3"]
    assert [row["id"] for row in assign_ids(rows)] == ["a.png#0", "a.png#1", "3"]
    with pytest.raises(ValueError, match="need an id column"):
        assign_ids([{"answer": "yes"}])


def test_predictions_key_variants_and_errors() -> None:
    records = [
        {"question_id": 1, "text": "yes"},
        {"id": "2", "prediction": None},
        {"index": 3, "answer": "B"},
    ]
    assert predictions_from_records(records) == {"1": "yes", "2": "", "3": "B"}
    with pytest.raises(ValueError, match="1 duplicate prediction ids"):
        predictions_from_records([{"id": 1, "prediction": "a"}, {"id": "1", "prediction": "b"}])
    with pytest.raises(ValueError, match="record 1 needs an id key"):
        predictions_from_records([{"id": 1, "output": "a"}])


def test_read_records_formats(tmp_path) -> None:
    rows = [{"index": 0, "answer": "A"}, {"index": 1, "answer": "B"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(row) for row in rows))
    with (tmp_path / "table.tsv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["index", "answer"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    for name in ("list.json", "lines.jsonl", "lines.json"):
        assert read_records(tmp_path / name) == rows
    assert read_records(tmp_path / "table.tsv") == [
        {"index": "0", "answer": "A"},
        {"index": "1", "answer": "B"},
    ]

    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        read_records(tmp_path / "broken.jsonl")
    assert read_predictions(tmp_path / "lines.json") == {"0": "A", "1": "B"}  # index as id, answer as text


def test_parquet_without_pandas_names_the_missing_dependency(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    (tmp_path / "answers.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="reading parquet needs pandas"):
        read_records(tmp_path / "answers.parquet")


def test_tsv_answers_score_like_json(tmp_path) -> None:
    fields = ["index", "question", "answer", "category", "l2-category", "A", "B", "C", "D"]
    with (tmp_path / "mmbench.tsv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, delimiter="\t")
        writer.writeheader()
        writer.writerows(MMBENCH_ANSWERS[:10])  # groups 0-2: empty TSV cells are absent options
    results = score("mmbench", MMBENCH_PREDICTIONS, read_records(tmp_path / "mmbench.tsv"))
    assert results["metrics"]["overall"] == pytest.approx(2 / 3)
    assert results["metrics"]["row_accuracy"] == 0.9


# ----------------------------------------------------------------------------- CLI


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _score_args(benchmark: str, tmp_path) -> list[str]:
    predictions, answers = str(tmp_path / "preds.jsonl"), str(tmp_path / "answers.jsonl")
    return ["score", benchmark, "--predictions", predictions, "--answers", answers]


def test_cli_score_writes_results_json(tmp_path) -> None:
    _write_jsonl(tmp_path / "answers.jsonl", POPE_ANSWERS)
    _write_jsonl(
        tmp_path / "preds.jsonl",
        [{"id": key, "prediction": value} for key, value in POPE_PREDICTIONS.items()],
    )
    output = tmp_path / "out" / "pope.results.json"
    result = CliRunner().invoke(app, [*_score_args("POPE", tmp_path), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "2 malformed, 1 missing" in result.output
    assert "malformed: 4 (not_yes_no), 8 (not_yes_no)" in result.output
    saved = json.loads(output.read_text())
    assert set(saved) == {"benchmark", "metrics", "counts", "malformed", "missing", "extra", "outcomes"}
    assert saved["benchmark"] == "pope"
    assert saved["metrics"]["all/f1"] == pytest.approx(8 / 11)
    assert saved["missing"] == ["10"]
    right = {"1", "2", "3", "5", "6", "7", "9", "12", "13"}  # 4 and 8 malformed, 10 missing, 11 a false yes
    assert saved["outcomes"] == {str(i): str(i) in right for i in range(1, 14)}


def test_cli_score_reports_bad_answers_without_traceback(tmp_path) -> None:
    _write_jsonl(tmp_path / "answers.jsonl", [_pope(1, "maybe", "random")])
    _write_jsonl(tmp_path / "preds.jsonl", [{"id": 1, "prediction": "yes"}])
    result = CliRunner().invoke(app, _score_args("pope", tmp_path))
    assert result.exit_code == 1
    assert "is not yes or no" in result.output


def _results(benchmark: str, metrics: dict[str, float]) -> dict:
    return {
        "benchmark": benchmark,
        "metrics": metrics,
        "counts": {},
        "malformed": {},
        "missing": [],
        "extra": [],
    }


def test_compare_results_pairs_metrics() -> None:
    a = _results("mme", {"perception": 1226.3, "cognition": 300.0})
    b = _results("mme", {"perception": 1363.7, "OCR/score": 95.0})
    rows = compare_results(a, b)
    assert [row.name for row in rows] == ["perception", "cognition", "OCR/score"]
    assert rows[0].difference == pytest.approx(137.4)
    assert (rows[1].b, rows[1].difference) == (None, None)
    assert (rows[2].a, rows[2].b) == (None, 95.0)


def test_cli_compare_prints_table_and_plots(tmp_path) -> None:
    write_results(_results("cvbench", {"2d": 0.5, "3d": 0.543, "overall": 0.5215}), tmp_path / "causal.json")
    write_results(_results("cvbench", {"2d": 0.578, "3d": 0.641, "overall": 0.6095}), tmp_path / "mma.json")
    plot = tmp_path / "plots" / "compare.png"
    result = CliRunner().invoke(
        app, ["compare", str(tmp_path / "causal.json"), str(tmp_path / "mma.json"), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.count("│") >= 4}
    assert lines["3d"].split()[3:8:2] == ["0.5430", "0.6410", "+0.0980"]
    assert lines["overall"].split()[3:8:2] == ["0.5215", "0.6095", "+0.0880"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_refuses_different_benchmarks(tmp_path) -> None:
    write_results(_results("pope", {"all/f1": 0.8}), tmp_path / "a.json")
    write_results(_results("mme", {"perception": 1300.0}), tmp_path / "b.json")
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert result.exit_code == 1
    assert "different benchmarks" in result.output


def test_free_form_answers_match_blind_to_case_and_surrounding_punctuation_only() -> None:
    assert normalise_answer(" Red.") == "red"
    assert normalise_answer("(A)") == "(a)"
    assert normalise_answer("right (B).") == normalise_answer("Right (B)") == "right (b)"
    assert not answers_match("right (B", "right (B)")
    assert normalise_answer("yes  no") == "yes no"
    assert not answers_match("red circle", "red")
    assert answers_match("Red!", "red")
