"""The lmms-eval plugin, run by lmms-eval's own evaluator on local tasks over small local files.

The plugin is found the way lmms-eval finds any plugin: an entry point in the group ``lmms_eval.models``.
aki declares it in ``pyproject.toml``; so that these tests do not depend on how aki was installed, the
module fixture also writes the same entry point into a distribution's metadata on ``sys.path`` (what ``pip``
writes for an installed package) and asks lmms-eval's registry to load it.

The tasks use the rigged ``yes_aki`` model (always "Yes"; see conftest), so every metric is hand-computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import solid, write_jsonl

lmms_eval = pytest.importorskip("lmms_eval")
from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import MODEL_REGISTRY_V2  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from aki.eval.lmms_eval_model import AkiLmms  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
ENTRY_POINT_GROUP = "lmms_eval.models"
ENTRY_POINT = {"aki": "aki.eval.lmms_eval_model:MANIFEST"}

TASK_UTILS = """
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent


def doc_to_visual(doc):
    return [Image.open(HERE / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def rounds_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    assert previous_output == ["Yes"] * round_idx, previous_output
    assert previous_round_info == (None if round_idx == 1 else {"round": round_idx - 1}), previous_round_info
    terminal = round_idx >= doc["rounds"]
    return doc_to_visual(doc), f"Round {round_idx}: {doc['question']}", terminal, previous_output, {"round": round_idx}


def rounds_process_results(doc, results):
    answers = results[0]
    return {"rounds": len(answers), "all_yes": float(all(answer == "Yes" for answer in answers))}
"""

TASKS = {
    "aki_test_yes": """
task: aki_test_yes
dataset_path: json
dataset_kwargs: {data_files: {test: yes.jsonl}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs: {max_new_tokens: 1, until: ["\\n\\n"]}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
""",
    "aki_test_choice": """
task: aki_test_choice
dataset_path: json
dataset_kwargs: {data_files: {test: choice.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: ["No", "Yes", "Maybe"]
doc_to_target: answer
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
""",
    "aki_test_rounds": """
task: aki_test_rounds
dataset_path: json
dataset_kwargs: {data_files: {test: rounds.jsonl}}
test_split: test
output_type: generate_until_multi_round
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.rounds_doc_to_text
doc_to_target: answer
generation_kwargs: {max_new_tokens: 1}
process_results: !function utils.rounds_process_results
metric_list:
  - {metric: rounds, aggregation: mean, higher_is_better: true}
  - {metric: all_yes, aggregation: mean, higher_is_better: true}
""",
}


@pytest.fixture(scope="module")
def entry_point_path(tmp_path_factory):
    """A distribution on ``sys.path`` whose metadata declares aki's entry point; lmms-eval's registry loads it."""
    root = tmp_path_factory.mktemp("entry_point")
    metadata = root / "aki_lmms_eval_entry_point-0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: aki-lmms-eval-entry-point\nVersion: 0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in ENTRY_POINT.items())
    (metadata / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)  # what importing lmms_eval.models does
        yield root


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three local tasks (generate_until, multiple_choice, multi-round) over JSON lines files and PNGs."""
    root = tmp_path_factory.mktemp("tasks")
    for i in range(4):
        solid((60 * i, 0, 0)).save(root / f"image_{i}.png")
    question = "Is there a cat in the image?"
    write_jsonl(
        root / "yes.jsonl",
        [
            {"id": i, "question": question, "answer": a, "image": f"image_{i}.png"}
            for i, a in enumerate(["Yes", "No", "Yes"])
        ],
    )
    write_jsonl(
        root / "choice.jsonl",
        [
            {"id": i, "question": question, "answer": a, "image": f"image_{i}.png"}
            for i, a in enumerate(["Yes", "No", "Yes", "Maybe"])
        ],
    )
    write_jsonl(
        root / "rounds.jsonl",
        [
            {"id": i, "question": question, "answer": "Yes", "rounds": r, "image": f"image_{i}.png"}
            for i, r in enumerate([1, 3, 2])
        ],
    )
    (root / "utils.py").write_text(TASK_UTILS)
    for name, text in TASKS.items():
        (root / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets"))


def evaluate(saved, task_dir, task: str, *, batch_size: int = 2, gen_kwargs: str | None = None) -> dict:
    """lmms-eval's ``simple_evaluate`` with the model named "aki", as the command line calls it."""
    return simple_evaluate(
        model="aki",
        model_args=f"pretrained={saved.path},device=cpu",
        tasks=[task],
        batch_size=batch_size,
        gen_kwargs=gen_kwargs,
        task_manager=TaskManager("WARNING", include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        process_docs_parallel=1,
    )


def test_pyproject_declares_the_entry_point():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads(PYPROJECT.read_text())["project"].get("entry-points", {}).get(ENTRY_POINT_GROUP)
    if declared is None:
        pytest.skip(f'pyproject.toml has no [project.entry-points."{ENTRY_POINT_GROUP}"] table yet')
    assert declared == ENTRY_POINT


def test_lmms_eval_registry_resolves_aki_from_the_entry_point(entry_point_path):
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    resolved = registry.resolve("aki")
    assert (resolved.model_type, resolved.class_path) == ("simple", "aki.eval.lmms_eval_model.AkiLmms")
    assert registry.get_model_class("aki") is AkiLmms


def test_lmms_eval_command_line_end_to_end(yes_aki, task_dir, entry_point_path, tmp_path):
    """``lmms-eval --model aki --model_args pretrained=DIR,...`` in a fresh process, as a user runs it."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(entry_point_path), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "datasets"),
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from lmms_eval.cli.dispatch import main; sys.exit(main())",  # the lmms-eval script
        "--model",
        "aki",
        "--model_args",
        f"pretrained={yes_aki.path},mma=false,attn_implementation=eager,device=cpu",
        "--tasks",
        "aki_test_yes",
        "--include_path",
        str(task_dir),
        "--batch_size",
        "2",
        "--output_path",
        str(tmp_path / "out"),
    ]
    process = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    [results_file] = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["results"]["aki_test_yes"]["exact_match,none"] == pytest.approx(2 / 3)  # Yes, No, Yes
    assert "mma=false" in results["config"]["model_args"]


def test_generate_until_cuts_answers_at_until(yes_aki, task_dir, entry_point_path, offline_cache):
    results = evaluate(yes_aki, task_dir, "aki_test_yes", gen_kwargs="max_new_tokens=5,until=sY")
    responses = [sample["resps"] for sample in results["samples"]["aki_test_yes"]]
    assert responses == [[["Ye"]]] * 3  # "YesYes..." cut before "sY"
    assert results["results"]["aki_test_yes"]["exact_match,none"] == 0.0


def test_multiple_choice_picks_the_likeliest_answer(yes_aki, task_dir, entry_point_path, offline_cache):
    results = evaluate(yes_aki, task_dir, "aki_test_choice", batch_size=3)  # 12 requests: 4 batches
    # "Yes" is the likeliest choice for every document: right for 2 of the 4 answers (Yes, No, Yes, Maybe)
    assert results["results"]["aki_test_choice"]["acc,none"] == 0.5
    [first, *_] = results["samples"]["aki_test_choice"]
    negative_log_likelihoods = [response[0][0] for response in first["resps"]]  # No, Yes, Maybe
    assert negative_log_likelihoods[1] == pytest.approx(0.6931, abs=1e-4)  # -ln(1/2)
    assert negative_log_likelihoods[0] == negative_log_likelihoods[2] > negative_log_likelihoods[1]


def test_multi_round_documents_stop_independently(yes_aki, task_dir, entry_point_path, offline_cache):
    results = evaluate(yes_aki, task_dir, "aki_test_rounds")
    metrics = results["results"]["aki_test_rounds"]
    assert metrics["rounds,none"] == 2.0  # 1, 3 and 2 rounds
    assert metrics["all_yes,none"] == 1.0


def test_model_args(yes_aki):
    model = AkiLmms(
        pretrained=str(yes_aki.path), mma=False, attn_implementation="eager", batch_size="4", device="cpu"
    )
    assert (model.runner.mma, model.runner.attn_implementation, model.batch_size) == (False, "eager", 4)
    with pytest.raises(ValueError, match="batch_size must be a positive number, got 'auto'"):
        AkiLmms(pretrained=str(yes_aki.path), batch_size="auto")
    with pytest.raises(TypeError, match="mma must be true or false, got 'yes'"):
        AkiLmms(pretrained=str(yes_aki.path), mma="yes")
    with pytest.raises(TypeError, match="unexpected keyword argument 'flash'"):
        AkiLmms(pretrained=str(yes_aki.path), flash=True)
