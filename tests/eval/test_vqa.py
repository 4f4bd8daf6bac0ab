"""Free-form VQA: scoring by hand, paired comparison, and questions asked exactly as the model was trained."""

from __future__ import annotations

import json

import pytest
from eval_helpers import solid, write_jsonl
from typer.testing import CliRunner

from aki.data import synthetic
from aki.data.encoding import ChatEncoder
from aki.data.sources import LlavaFile
from aki.eval.benchmarks import load_images, read_examples
from aki.eval.cli import app
from aki.eval.run import example_prompt, prompt_record
from aki.eval.scorers import paired_differences, score, vqa_rows
from aki.generation import Runner
from aki.mma import IGNORE_INDEX
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer
from aki.train.lineage import RECORD_FILE


def llava(question_id: str, question: str, answer: str, category: str) -> dict:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": question_id, "image": "x.png", "conversations": turns, "category": category}


ANSWERS = [
    llava("q1", "what colour is it?", "crimson", "colour"),
    llava("q2", "what colour is it?", "teal", "colour"),
    {"id": "q3", "image": "x.png", "question": "what is it?", "answer": "disc", "category": "shape"},
    {"id": "q4", "image": "x.png", "question": "is it gold?", "answer": "yes", "category": "yes/no"},
    {"id": "q5", "image": "x.png", "question": "is it teal?", "answer": "no", "category": "yes/no"},
    llava("q6", "what is it?", "block", "shape"),
]
PREDICTIONS = {
    "q1": "Crimson.",  # right once normalised, not exactly
    "q2": "teal",  # right both ways
    "q3": "a disc",  # wrong both ways: an article is not stripped
    "q4": "",  # empty: wrong, and listed
    # q5 missing: wrong
    "q6": " block ",  # right both ways: surrounding spaces do not count
    "q9": "yes",  # not a question of the file: ignored
}


def test_free_form_scores_computed_by_hand():
    results = score("vqa", PREDICTIONS, ANSWERS)
    assert results["metrics"] == {
        "normalised_match": 3 / 6,  # q1, q2, q6
        "exact_match": 2 / 6,  # q2, q6
        "category/colour/normalised_match": 1.0,
        "category/colour/exact_match": 0.5,
        "category/shape/normalised_match": 0.5,
        "category/shape/exact_match": 0.5,
        "category/yes/no/normalised_match": 0.0,
        "category/yes/no/exact_match": 0.0,
    }
    assert results["counts"] == {
        "answers": 6,
        "predictions": 6,
        "correct": 3,
        "malformed": 1,
        "missing": 1,
        "extra": 1,
        "exact_correct": 2,
        "category/colour": 2,
        "category/shape": 2,
        "category/yes/no": 2,
    }
    assert (results["malformed"], results["missing"], results["extra"]) == ({"q4": "empty"}, ["q5"], ["q9"])
    assert results["outcomes"] == {"q1": True, "q2": True, "q3": False, "q4": False, "q5": False, "q6": True}
    assert results["categories"]["q3"] == "shape"
    without = score("vqa", PREDICTIONS, ANSWERS, category_field="topic")  # no such column: overall only
    assert set(without["metrics"]) == {"normalised_match", "exact_match"} and "categories" not in without


def test_the_reference_is_the_last_answer_turn():
    two_turns = llava("t", "what colour is it?", "red", "colour")
    two_turns["conversations"] += [
        {"from": "human", "value": "and its shape?"},
        {"from": "gpt", "value": "star"},
    ]
    assert vqa_rows([two_turns])[0]["answer"] == "star"
    two_turns["conversations"].append({"from": "human", "value": "anything else?"})
    with pytest.raises(
        ValueError, match="record 1 \\('t'\\): its conversation must end with the answer turn"
    ):
        vqa_rows([two_turns])


def test_paired_differences_computed_by_hand():
    outcomes = {"a": [True, False, False, True], "b": [True, True, False, True]}
    categories = {"1": "x", "2": "x", "3": "y", "4": "y"}
    a, b = (
        {
            "benchmark": "vqa",
            "outcomes": dict(zip("1234", outcomes[k], strict=True)),
            "categories": categories,
        }
        for k in "ab"
    )
    rows = {row.name: row for row in paired_differences(a, b)}
    # all: differences 0, 1, 0, 0: mean 0.25, sd 0.5, half width 1.96 * 0.5 / 2 = 0.49
    assert (rows["all"].questions, rows["all"].a, rows["all"].b) == (4, 0.5, 0.75)
    assert (rows["all"].difference, rows["all"].low, rows["all"].high) == pytest.approx((0.25, -0.24, 0.74))
    # x: differences 0, 1: mean 0.5, sd 0.7071, half width 1.96 * 0.7071 / 1.4142 = 0.98
    assert (rows["category/x"].low, rows["category/x"].high) == pytest.approx((-0.48, 1.48))
    assert (rows["category/y"].difference, rows["category/y"].low, rows["category/y"].high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share no question id"):
        paired_differences(a, {**b, "outcomes": {"9": True}})


@pytest.fixture(scope="module")
def processor():
    tokenizer = tiny_tokenizer(
        synthetic.vocabulary()
    )  # whitespace tokens: every newline of the template counts
    return AkiProcessor.for_model(aki_tiny(tokenizer), tokenizer)


@pytest.mark.parametrize("order", ["as_is", "image_first", "text_first"])
def test_the_evaluation_prompt_is_the_training_prompt_token_for_token(tmp_path, processor, order):
    solid((200, 20, 60)).save(tmp_path / "a.png")
    solid((0, 128, 128)).save(tmp_path / "b.png")
    one_turn = llava("one", "what colour is the star?", "red", "colour")
    one_turn["image"] = "a.png"
    two_turns = {
        "id": "two",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "system", "value": "answer in one word."},
            {"from": "human", "value": "which shape is red?\n<image>"},
            {"from": "gpt", "value": "star"},
            {"from": "human", "value": "<image>\nand here?"},
            {"from": "gpt", "value": "circle"},
        ],
    }
    path = tmp_path / "test.json"
    path.write_text(json.dumps([one_turn, two_turns]))
    encoder = ChatEncoder(processor, max_length=256, order=order)
    runner = Runner(AkiForConditionalGeneration(aki_tiny(processor.tokenizer)), processor)
    _, examples = read_examples("vqa", path, order=order)
    training = LlavaFile(path)
    for index, example in enumerate(examples):
        trained = encoder.encode(training[index])
        last_answer = max(i for i, label in enumerate(trained.labels) if label == IGNORE_INDEX)
        asked = runner.encode(example_prompt(example, load_images(example)))
        prompt_ids = asked["input_ids"][0].tolist()
        # the prompt is every token before the last answer, the answer's header included
        assert prompt_ids == trained.input_ids[: last_answer + 1]
        assert asked["mma_roles"][0].tolist() == trained.roles[: last_answer + 1]
    assert examples[1].text == "which shape is red?\nand here?"


def test_aki_eval_run_scores_a_vqa_file_and_compare_pairs_the_two_arms(yes_aki, tmp_path):
    solid((10, 20, 30)).save(tmp_path / "x.png")
    rows = [
        llava("q1", "is there a cat?", "yes", "yes/no"),  # "Yes": right once normalised, not exactly
        llava("q2", "is there a dog?", "Yes", "yes/no"),  # right both ways
        llava("q3", "what color is the cat?", "red", "colour"),  # wrong
    ]
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    output = tmp_path / "out"
    common = [
        "run",
        "--model",
        str(yes_aki.path),
        "--benchmark",
        "vqa",
        "--data",
        str(data),
        "-o",
        str(output),
    ]
    for arm in ("--no-mma", "--mma"):
        result = CliRunner().invoke(app, [*common, arm, "--max-new-tokens", "1"])
        assert result.exit_code == 0, result.output
    assert "prompt: data in the model's chat template, images as_is, no instruction" in result.output
    assert "no training record" in result.output  # saved by hand: the image order is the data's
    results = json.loads((output / "vqa-mma.results.json").read_text())
    assert results["metrics"]["normalised_match"] == pytest.approx(2 / 3)
    assert results["metrics"]["exact_match"] == pytest.approx(1 / 3)
    assert results["metrics"]["category/yes/no/normalised_match"] == 1.0
    assert results["metrics"]["category/colour/normalised_match"] == 0.0
    assert results["run"]["images_resized"] == "40 x 30 -> 32 x 32"
    compare = ["compare", str(output / "vqa-causal.results.json"), str(output / "vqa-mma.results.json")]
    result = CliRunner().invoke(app, compare)
    assert result.exit_code == 0, result.output
    paired = {
        line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│ ")
    }
    for name in ("all", "category/colour", "category/yes/no"):
        assert name in paired
    assert [cell.strip() for cell in paired["all"].split("│")[2:5]] == ["3", "0.6667", "0.6667"]
    instructed = CliRunner().invoke(app, [*common, "--mma", "--instruction", "Answer in one word."])
    assert (
        "note: the prompt differs from training: an instruction the model was not trained with"
        in instructed.output
    )
    first = json.loads((output / "vqa-mma.predictions.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "Answer in one word. is there a cat?"


def test_the_prompt_follows_the_training_record_and_names_what_differs(tmp_path):
    stages = [
        {"stage": "vision", "init": None, "trains_vision_tower": True, "order": None},
        {"stage": "sft", "init": "runs/pt/final", "trains_vision_tower": False, "order": "text_first"},
    ]
    (tmp_path / RECORD_FILE).write_text(json.dumps({"stages": stages}))
    as_trained = prompt_record(tmp_path, "vqa")
    assert (as_trained["image_order"], as_trained["trained_image_order"], as_trained["differences"]) == (
        "text_first",
        "text_first",
        [],
    )
    other = prompt_record(tmp_path, "vqa", order="image_first", instruction="Be brief.")
    assert other["differences"] == [
        "an instruction the model was not trained with is prepended: 'Be brief.'",
        "the images are placed image_first but the model was fine-tuned with text_first",
    ]
    assert prompt_record(tmp_path, "pope")["differences"] == [
        "the images are placed image_first but the model was fine-tuned with text_first"
    ]
