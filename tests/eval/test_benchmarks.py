"""Benchmark prompts in the paper's formats, and local benchmark files with their image layouts."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from eval_helpers import solid, write_jsonl

from aki.eval.benchmarks import PAPER_INSTRUCTIONS, load_images, prompt_text, read_examples


def test_cvbench_prompt_is_the_papers_multiple_choice_format():
    row = {"idx": 0, "question": "How many cats are there?", "choices": ["1", "2", "3"], "answer": "(B)"}
    assert prompt_text("CV-Bench", row, instruction=PAPER_INSTRUCTIONS["cvbench"]) == (
        "Answer with the option's letter from the given choices directly. How many cats are there?\n"
        "Options:\nA. 1\nB. 2\nC. 3\n"
    )
    assert prompt_text("CV-Bench", row) == "How many cats are there?\nOptions:\nA. 1\nB. 2\nC. 3\n"
    as_json_text = {**row, "choices": json.dumps(["1", "2"])}  # choices stored as text (TSV, CSV)
    assert prompt_text("cvbench", as_json_text).endswith("Options:\nA. 1\nB. 2\n")


def test_mmbench_prompt_puts_the_hint_after_the_question_and_skips_absent_options():
    row = {"index": 3, "question": "What color is the cat?", "hint": "A cat sits.", "A": "red", "B": "blue"}
    row.update({"C": float("nan"), "D": None})  # how parquet and JSON mark absent options
    assert prompt_text("mmbench", row, instruction=PAPER_INSTRUCTIONS["mmbench"]) == (
        "Answer with the option's letter from the given choices directly. What color is the cat?\n"
        "Context: A cat sits.\nOptions:\nA. red\nB. blue\n"
    )
    no_hint = {**row, "hint": float("nan")}
    assert "Context" not in prompt_text("mmbench", no_hint)


@pytest.mark.parametrize("name", ["pope", "MME"])  # not "benchmark": pytest-benchmark owns that fixture
def test_yes_no_prompts_are_the_question_and_the_papers_instruction_only_when_asked(name):
    row = {"question_id": "1", "question": " Is there a cat in the image? Please answer yes or no."}
    assert prompt_text(name, row) == "Is there a cat in the image? Please answer yes or no."
    assert prompt_text(name, row, instruction=PAPER_INSTRUCTIONS[name.lower()]) == (
        "Answer the question using a single word or phrase. Is there a cat in the image? Please answer yes or no."
    )


def _png(color) -> bytes:
    buffer = io.BytesIO()
    solid(color, size=(6, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def _colors(example) -> list[tuple[int, int, int]]:
    return [image.convert("RGB").getpixel((0, 0)) for image in load_images(example)]


def test_images_from_relative_paths_structs_lists_and_base64(tmp_path):
    (tmp_path / "images").mkdir()
    solid((10, 20, 30)).save(tmp_path / "images" / "a.png")
    rows = [
        {"question_id": "p", "question": "Is there a cat?", "answer": "yes", "image": "images/a.png"},
        {
            "question_id": "s",
            "question": "Is there a cat?",
            "answer": "no",
            "image": {"path": "images/a.png"},
        },
        {
            "question_id": "b",
            "question": "Is there a cat?",
            "answer": "no",
            "image": base64.b64encode(_png((1, 2, 3))).decode(),
        },
        {
            "question_id": "l",
            "question": "Is there a cat?",
            "answer": "no",
            "image": ["images/a.png", "images/a.png"],
        },
        {
            "question_id": "f",
            "question": "Is there a cat?",
            "answer": "no",
            "image": "",
            "filename": "images/a.png",
        },
    ]
    rows_read, examples = read_examples("pope", write_jsonl(tmp_path / "pope.jsonl", rows))
    assert [row["id"] for row in rows_read] == ["p", "s", "b", "l", "f"]
    assert [example.id for example in examples] == ["p", "s", "b", "l", "f"]
    assert [_colors(example) for example in examples] == [
        [(10, 20, 30)],
        [(10, 20, 30)],
        [(1, 2, 3)],
        [(10, 20, 30), (10, 20, 30)],
        [(10, 20, 30)],
    ]
    _, first_two = read_examples("pope", tmp_path / "pope.jsonl", limit=2)
    assert [example.id for example in first_two] == ["p", "s"]


def test_vlmevalkit_tsv_rows_may_name_the_row_that_holds_their_image(tmp_path):
    shared = base64.b64encode(_png((7, 8, 9))).decode()
    fields = ["index", "question", "A", "B", "answer", "category", "image"]
    rows = [
        {
            "index": 0,
            "question": "What color?",
            "A": "red",
            "B": "blue",
            "answer": "A",
            "category": "c",
            "image": shared,
        },
        {
            "index": 1000000,
            "question": "What color?",
            "A": "blue",
            "B": "red",
            "answer": "B",
            "category": "c",
            "image": "0",
        },
    ]
    with (tmp_path / "mmbench.tsv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    _, examples = read_examples("mmbench", tmp_path / "mmbench.tsv")
    assert [_colors(example) for example in examples] == [[(7, 8, 9)], [(7, 8, 9)]]
    assert examples[1].text.endswith("Options:\nA. blue\nB. red\n")


def test_parquet_with_image_structs(tmp_path):
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pandas.DataFrame(
        [
            {
                "idx": 0,
                "question": "How many cats are there?",
                "choices": ["1", "2"],
                "answer": "(A)",
                "source": "COCO",
                "image": {"bytes": _png((4, 5, 6)), "path": "x.png"},
            }
        ]
    )
    frame.to_parquet(tmp_path / "cvbench.parquet")
    _, [example] = read_examples("cvbench", tmp_path / "cvbench.parquet")
    assert example.text.endswith("Options:\nA. 1\nB. 2\n")  # the list column came back as an array
    assert _colors(example) == [(4, 5, 6)]


def test_image_problems_name_the_row(tmp_path):
    base = {"question": "Is there a cat?", "answer": "yes"}
    write_jsonl(tmp_path / "missing.jsonl", [{"question_id": "q7", **base, "image": "nowhere.png"}])
    with pytest.raises(ValueError, match=r"row 'q7': image 'nowhere.png' is not a file under"):
        read_examples("pope", tmp_path / "missing.jsonl")
    write_jsonl(tmp_path / "none.jsonl", [{"question_id": "q8", **base}])
    with pytest.raises(ValueError, match=r"row 'q8' has no image"):
        read_examples("pope", tmp_path / "none.jsonl")
    not_an_image = base64.b64encode(b"x" * 80).decode()
    write_jsonl(tmp_path / "bad.jsonl", [{"question_id": "q9", **base, "image": not_an_image}])
    _, [example] = read_examples("pope", tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match=r"example 'q9': 80 image bytes could not be read as an image"):
        load_images(example)
