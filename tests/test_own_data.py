"""The README's "Your own data" walk, run as written through the command line, on the smoke preset and a few steps.

Every code block of the section runs in order in a temporary folder: the Python blocks as they are, each ``aki``
command through the CLI with only the sizes made small (``--preset smoke`` for the quickstart, a few steps of
small batches for training). The test then checks what each step promised: the words added to the vocabulary
and saved with the model, both arms trained on the same samples, a free-form evaluation asked as the model was
trained, a paired comparison, batched answers.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aki.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
# What the walk changes in a command of the README: small sizes, quiet output.
SMALL = {
    "quickstart": ["--preset", "smoke", "--no-progress"],
    "train": [
        "steps=3",
        "batch_size=4",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "logging.record_samples=true",
    ],
    "eval": ["--batch-size", "16"],
}


def walk_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every block of the README section "Your own data", in order."""
    section = README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, words split as the shell does."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def small(words: list[str]) -> list[str]:
    """An ``aki`` command of the walk with small sizes (the last override of a key wins)."""
    assert words[0] == "aki", words
    extra = SMALL["eval"] if words[1:3] == ["eval", "run"] else [] if words[1] == "eval" else SMALL[words[1]]
    return [*words[1:], *extra]


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """Run the walk once; the outputs of its commands and the namespace of its Python blocks."""
    folder = tmp_path_factory.mktemp("own_data")
    outputs, namespace = [], {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for language, code in walk_blocks():
            if language == "python":
                exec(compile(code, str(README), "exec"), namespace)
                continue
            for words in commands(code):
                result = CliRunner().invoke(app, small(words))
                assert result.exit_code == 0, f"{shlex.join(words)}\n{result.output}"
                outputs.append((words, result.output))
    return folder, outputs, namespace


def output_of(outputs, *prefix: str) -> list[str]:
    return [text for words, text in outputs if words[1 : 1 + len(prefix)] == list(prefix)]


def test_the_walk_is_the_data_the_commands_and_batched_inference():
    blocks = walk_blocks()
    assert [language for language, _ in blocks] == ["python", "bash", "bash", "python"]
    run = [small(words)[:3] for language, code in blocks if language == "bash" for words in commands(code)]
    expected = [["quickstart", "--stop-after"], ["train", "sft"], ["train", "sft"]]
    expected += [["eval", "run"], ["eval", "run"], ["eval", "compare"]]
    assert [words[:2] for words in run] == expected


def test_the_data_is_llava_json_with_images_on_disk(walk):
    folder, _, _ = walk
    train = json.loads((folder / "mydata" / "train.json").read_text())
    assert len(train) == 600 and len(json.loads((folder / "mydata" / "test.json").read_text())) == 60
    assert {record["category"] for record in train} == {"colour", "shape", "yes/no"}
    assert all((folder / "mydata" / record["image"]).is_file() for record in train)


def test_fine_tuning_adds_the_new_words_and_trains_both_arms_on_the_same_samples(walk):
    folder, outputs, _ = walk
    mma, _ = output_of(outputs, "train", "sft")
    assert "the tokenizer does not know 6 words of the training data" in mma
    assert "model.extend_vocabulary adds them" in mma and "skipped_samples  0" in mma
    assert "data: train 600 samples; 3 steps x 4 = 12 samples, 0.02 epochs" in mma
    for arm in ("mma", "causal"):
        final = folder / "runs" / f"mydata-{arm}" / "final"
        tokenizer = json.loads((final / "tokenizer.json").read_text())["model"]["vocab"]
        assert {"crimson", "teal", "gold", "disc", "block", "object"} <= set(tokenizer)
        config = json.loads((final / "config.json").read_text())
        assert config["text_config"]["vocab_size"] == len(tokenizer) == 83 + 6
        assert json.loads((final / "aki_training.json").read_text())["stages"][-1]["added_words"] == 6
    mma_samples, causal_samples = (
        (folder / "runs" / f"mydata-{arm}" / "samples" / "rank0.jsonl").read_text().splitlines()
        for arm in ("mma", "causal")
    )
    assert len(mma_samples) == 3 and mma_samples == causal_samples  # the same samples, step by step


def test_evaluation_asks_as_trained_and_compare_pairs_the_arms(walk):
    folder, outputs, _ = walk
    for text in output_of(outputs, "eval", "run"):
        assert "the prompt is the one the model was fine-tuned with" in text
        assert "note: the prompt differs" not in text
        assert "images are resized to the vision tower's input (64 x 64 -> 32 x 32)" in text
    results = {
        arm: json.loads((folder / "eval" / f"vqa-{arm}.results.json").read_text())
        for arm in ("mma", "causal")
    }
    for result in results.values():
        assert result["counts"]["answers"] == 60
        assert {"normalised_match", "exact_match", "category/yes/no/normalised_match"} <= set(
            result["metrics"]
        )
        assert (
            result["run"]["prompt"]["image_order"]
            == result["run"]["prompt"]["trained_image_order"]
            == "image_first"
        )
    (compare,) = output_of(outputs, "eval", "compare")
    rows = {
        line.split("│")[1].strip(): line.split("│") for line in compare.splitlines() if line.startswith("│ ")
    }
    right = {arm: sum(result["outcomes"].values()) / 60 for arm, result in results.items()}
    assert rows["all"][2:5] == [" 60 ", f" {right['causal']:.4f} ", f" {right['mma']:.4f} "]
    assert {"category/colour", "category/shape", "category/yes/no"} <= set(rows)


def test_batched_inference_answers_every_question_in_order(walk, monkeypatch):
    folder, _, namespace = walk
    monkeypatch.chdir(folder)  # the block's image path is relative to the walk's folder
    answers, questions = namespace["answers"], namespace["questions"]
    assert len(answers) == len(questions) == 3 and all(isinstance(answer, str) for answer in answers)
    runner, prompt, params = namespace["runner"], namespace["Prompt"], namespace["SamplingParams"]
    alone = [
        runner.generate([prompt(q, [namespace["image"]])], params(max_new_tokens=4))[0] for q in questions
    ]
    assert answers == alone  # batched, left-padded and sorted by length: the answers of one prompt at a time
