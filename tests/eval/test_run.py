"""``aki eval run``: answer a local benchmark file, score it, write predictions, results and markdown; compare."""

from __future__ import annotations

import json

import pytest
from eval_helpers import pope_rows, write_jsonl
from typer.testing import CliRunner

from aki.eval.cli import app
from aki.eval.scorers import score_files

POPE_ANSWERS = ["yes", "no", "yes", "no", "no"]


@pytest.fixture
def pope_file(tmp_path):
    return write_jsonl(tmp_path / "pope.jsonl", pope_rows(tmp_path, POPE_ANSWERS))


def run(model, data, output, *options: str):
    arguments = [
        "run",
        "--model",
        str(model),
        "--benchmark",
        "pope",
        "--data",
        str(data),
        "--output",
        str(output),
    ]
    result = CliRunner().invoke(app, [*arguments, "--max-new-tokens", "1", "--batch-size", "2", *options])
    assert result.exit_code == 0, result.output
    return result


def test_run_writes_predictions_results_and_markdown(yes_aki, pope_file, tmp_path):
    output = tmp_path / "out"
    result = run(yes_aki.path, pope_file, output, "--mma", "--paper-instruction")
    assert "an instruction the model was not trained with is prepended: 'Answer the question" in result.output
    predictions = [
        json.loads(line) for line in (output / "pope-mma.predictions.jsonl").read_text().splitlines()
    ]
    assert [record["id"] for record in predictions] == ["0", "1", "2", "3", "4"]
    assert {record["prediction"] for record in predictions} == {"Yes"}  # the rigged model always says Yes
    assert (
        predictions[0]["prompt"]
        == "Answer the question using a single word or phrase. Is there a cat in the image?"
    )

    results = json.loads((output / "pope-mma.results.json").read_text())
    # 2 yes rows and 3 no rows, all answered yes: TP 2, FP 3, TN 0, FN 0
    assert results["metrics"]["all/accuracy"] == pytest.approx(2 / 5)
    assert results["metrics"]["all/precision"] == pytest.approx(2 / 5)
    assert results["metrics"]["all/recall"] == 1.0
    assert results["metrics"]["all/f1"] == pytest.approx(4 / 7)  # 2 * 0.4 * 1 / 1.4
    assert results["metrics"]["all/yes_ratio"] == 1.0
    run_info = results["run"]
    assert (run_info["mma"], run_info["attn_implementation"], run_info["batch_size"]) == (True, "sdpa", 2)
    assert (run_info["examples"], run_info["max_new_tokens"]) == (5, 1)
    assert run_info["examples_per_second"] == pytest.approx(5 / run_info["seconds"])

    assert run_info["prompt"]["instruction"] == "Answer the question using a single word or phrase."
    markdown = (output / "pope-mma.results.md").read_text()
    assert "| all/f1 | 0.5714 |" in markdown
    assert "5 answers, 5 predictions, 2 correct; 0 malformed and 0 missing" in markdown
    assert "MMA on, attention sdpa, batch size 2" in markdown

    # the predictions file is what `aki eval score` reads: same ids, same metrics
    rescored = score_files("pope", output / "pope-mma.predictions.jsonl", pope_file)
    assert rescored["metrics"] == results["metrics"]


def test_run_with_and_without_mma_then_compare(yes_aki, pope_file, tmp_path):
    output = tmp_path / "out"
    bare = run(yes_aki.path, pope_file, output, "--no-mma", "--limit", "2")
    run(yes_aki.path, pope_file, output, "--mma", "--limit", "2")
    assert (
        "prompt: benchmark format in the model's chat template, images image_first, no instruction"
        in bare.output
    )
    assert "no training record" in bare.output  # a model saved by hand: nothing says how it was trained
    predictions = (output / "pope-causal.predictions.jsonl").read_text().splitlines()
    assert json.loads(predictions[0])["prompt"] == "Is there a cat in the image?"  # no instruction unasked
    causal = json.loads((output / "pope-causal.results.json").read_text())
    assert causal["run"]["mma"] is False
    assert causal["counts"]["answers"] == 2  # --limit: the first two rows only, none missing
    assert causal["metrics"]["all/accuracy"] == 0.5
    plot = tmp_path / "compare.png"
    arguments = ["compare", str(output / "pope-causal.results.json"), str(output / "pope-mma.results.json")]
    result = CliRunner().invoke(app, [*arguments, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    accuracy = next(line for line in result.output.splitlines() if "all/accuracy" in line)
    assert accuracy.split()[3:8:2] == ["0.5000", "0.5000", "+0.0000"]
    paired = next(line for line in result.output.splitlines() if line.startswith("│ all "))
    cells = [cell.strip() for cell in paired.split("│")[2:8]]
    assert cells == ["2", "0.5000", "0.5000", "+0.0000", "+0.0000", "+0.0000"]  # n, A, B, B - A, low, high
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_run_reports_a_bad_data_file_without_traceback(yes_aki, tmp_path):
    data = write_jsonl(
        tmp_path / "pope.jsonl",
        [{"question_id": "q1", "question": "?", "answer": "yes", "image": "gone.png"}],
    )
    arguments = ["run", "--model", str(yes_aki.path), "--benchmark", "pope", "--data", str(data)]
    result = CliRunner().invoke(app, [*arguments, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "row 'q1': image 'gone.png' is not a file under" in result.output
