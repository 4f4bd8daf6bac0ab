"""The quickstart end to end on the smoke preset: data, pre-training, two fine-tuned arms, evaluation, files.

One small study runs once per module (seconds: a few steps of a very small model), through the command line,
with the two arms in two worker processes;
the tests read what it wrote. They check the files, that the saved models reload with ``from_pretrained`` and
answer the test split exactly as reported, and the schema of results.json. Whether MMA wins is not tested: the
study reports what it measures.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from aki.data.synthetic import Family, chance_level
from aki.eval.scorers import answers_match
from aki.integration import is_mma_enabled
from aki.models.aki import chat_template
from aki.quickstart.cli import app
from aki.quickstart.presets import STAGES, get_preset
from aki.quickstart.report import RESULTS_SCHEMA, RUN_KEYS
from aki.quickstart.study import FAMILIES, StudyOptions, evaluate, read_test, training_plan

CHAT_TEMPLATE = chat_template("")  # the quickstart's: an empty system turn

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    result = CliRunner().invoke(
        app, ["--preset", "smoke", "--output-dir", str(out), "--workers", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "results.json").read_text())


def test_the_command_prints_the_table(study):
    _, output, results = study
    assert "Test accuracy per question family (4 visual tokens, 1 seed" in output
    for family in [*FAMILIES, "overall"]:
        assert family in output
    mma = next(row for row in results["summary"] if row["family"] == "overall")["mma"]["mean"]
    assert f"{mma:.3f}" in output


def test_files_are_written(study):
    out, _, _ = study
    for name in ("accuracy.png", "curves.png", "mask.png"):
        assert (out / name).read_bytes()[:8] == PNG
    for model in ("pretrained", "causal", "mma"):
        files = {path.name for path in (out / model).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 48
    assert len((out / "data" / "test.jsonl").read_text().splitlines()) == 12  # 2 per family


def test_the_arms_differ_only_in_attention(study):
    out, _, results = study
    causal = json.loads((out / "causal" / "config.json").read_text())
    mma = json.loads((out / "mma" / "config.json").read_text())
    assert (causal.pop("use_mma"), mma.pop("use_mma")) == (False, True)
    assert causal == mma
    config = {arm: (out / "work" / f"sft_{arm}" / "config.yaml").read_text() for arm in ("causal", "mma")}
    assert config["causal"].replace("causal", "ARM") == config["mma"].replace("mma", "ARM")
    runs = {run["arm"]: run for run in results["runs"]}
    assert runs["causal"]["pretrain_losses"] == runs["mma"]["pretrain_losses"]  # one pre-trained start


def test_saved_models_reload_and_answer_as_reported(study):
    out, _, results = study
    test = read_test(out / "data")
    for run in results["runs"]:
        model = AutoModelForImageTextToText.from_pretrained(out / run["model_dir"])
        assert is_mma_enabled(model.language_model) == (run["arm"] == "mma")
        processor = AutoProcessor.from_pretrained(out / run["model_dir"])
        assert processor.chat_template == CHAT_TEMPLATE  # trained and asked with the empty system message
        right = evaluate(out / run["model_dir"], test, batch_size=5)
        assert sum(right) == run["correct"]["overall"]
        predictions = [
            json.loads(line) for line in (out / run["model_dir"] / "test_predictions.jsonl").open()
        ]
        assert [answers_match(p["prediction"], p["answer"]) for p in predictions] == right


def test_results_json_schema(study):
    _, _, results = study
    assert set(results) == set(RESULTS_SCHEMA)
    assert results["schema_version"] == 2
    assert results["families"] == [family.value for family in Family]
    assert results["chance"] == pytest.approx(
        {**{f.value: chance_level(f) for f in Family}, "overall": sum(chance_level(f) for f in Family) / 6}
    )
    assert results["arms"] == ["causal", "mma"]
    assert results["options"]["seeds"] == [0] and results["options"]["latents"] == [4]
    assert results["options"]["shared_threads"] == 2  # 1 thread x 2 workers
    assert results["data"]["test_per_family"] == 2 and results["data"]["test_samples"] == 12
    assert {"data", "vision", "pretrain", "fine_tune_and_evaluate", "report", "total"} <= set(
        results["timings"]
    )
    assert len(results["runs"]) == 2
    for run in results["runs"]:
        assert set(run) == set(RUN_KEYS)
        steps = {stage: get_preset("smoke").config(stage).steps for stage in STAGES}
        assert len(run["losses"]) == steps["sft_curriculum"] + steps["sft"]
        assert len(run["pretrain_losses"]) == steps["pretrain"]
        assert len(run["vision_losses"]) == steps["vision"]
        assert run["total"] == {**dict.fromkeys(FAMILIES, 2), "overall": 12}
        for family, correct in run["correct"].items():
            assert run["accuracy"][family] == correct / run["total"][family]
    assert [(row["latents"], row["family"]) for row in results["summary"]] == [
        (4, family) for family in [*FAMILIES, "overall"]
    ]
    for row in results["summary"]:
        for cell in (row["causal"], row["mma"], row["delta_mma"]):
            assert set(cell) == {"mean", "low", "high"} and cell["low"] <= cell["mean"] <= cell["high"]


def test_each_arm_fine_tunes_on_the_curriculum_families_first_then_on_every_family(study):
    out, _, _ = study
    smoke, data = get_preset("smoke"), out / "data"
    lines = (data / "train.jsonl").read_text().splitlines()
    per_family = {family: (data / f"train_{family}.jsonl").read_text().splitlines() for family in FAMILIES}
    assert sorted(line for family_lines in per_family.values() for line in family_lines) == sorted(lines)
    for family, family_lines in per_family.items():
        assert {json.loads(line)["family"] for line in family_lines} <= {family}
    for arm in ("causal", "mma"):
        plan = training_plan(arm, smoke)
        assert [(stage.name, stage.config) for stage in plan] == [
            (f"sft_{arm}_curriculum", "sft_curriculum"),
            (f"sft_{arm}", "sft"),
        ]
        for stage in plan:
            history = (out / "work" / stage.name / "history.jsonl").read_text().splitlines()
            assert len(history) == smoke.config(stage.config).steps
            written = (out / "work" / stage.name / "config.yaml").read_text()
            assert f"root: {data}" in written and f"attention: {arm}" in written
    curriculum = smoke.config("sft_curriculum").data.sources
    assert [(source.name, source.path) for source in curriculum] == [("spatial", "train_spatial.jsonl")]


def test_fine_tuning_mixes_the_families_multiple_choice_weighted_three_to_one():
    for preset in ("default", "smoke", "gpu"):
        sources = get_preset(preset).config("sft").data.sources
        assert [(source.name, source.path, source.weight) for source in sources] == [
            (family, f"train_{family}.jsonl", 3.0 if family == "multiple_choice" else 1.0)
            for family in FAMILIES
        ]


def test_fine_tuning_takes_smaller_batches_than_the_stages_before_it():
    default = get_preset("default")
    assert {stage: default.config(stage).batch_size for stage in STAGES} == {
        "vision": 32,
        "pretrain": 32,
        "sft_curriculum": 16,
        "sft": 16,
    }


def test_the_training_plan_spends_the_same_fine_tuning_steps_on_every_arm():
    preset = get_preset("default")
    steps = {stage: preset.config(stage).steps for stage in STAGES}
    assert steps == {"vision": 1500, "pretrain": 600, "sft_curriculum": 800, "sft": 3200}
    for arm in ("causal", "mma", "dot"):
        configs = [preset.config(stage.config, stage.overrides) for stage in training_plan(arm, preset)]
        assert sum(config.steps for config in configs if config.stage == "sft") == 4000
        assert {config.model.attention for config in configs} == {"causal" if arm == "dot" else arm}
    dot = [preset.config(stage.config, stage.overrides) for stage in training_plan("dot", preset)]
    assert [(config.stage, config.steps, config.data.order) for config in dot] == [
        ("pretrain", 300, "text_first"),
        ("pretrain", 300, "image_first"),
        ("sft", 800, "image_first"),
        ("sft", 1600, "text_first"),
        ("sft", 1600, "image_first"),
    ]


def test_every_preset_stage_is_a_config_the_recipes_accept():
    for name in ("default", "smoke", "gpu"):
        preset = get_preset(name)
        vision = preset.config("vision")
        assert (vision.stage, vision.model.builder, vision.model.tokenizer) == (
            "vision",
            "aki_sized",
            "synthetic",
        )
        for stage in ("pretrain", "sft_curriculum", "sft"):
            config = preset.config(stage)
            assert config.model.tokenizer is None  # the processor saved by the vision stage, all the way
            assert config.model.train_vision_tower is False and config.data.max_length == 256
    with pytest.raises(ValueError, match="unknown quickstart stage 'dpo'"):
        get_preset("default").config("dpo")


def test_aki_quickstart_is_a_command_of_aki():
    from aki.cli import app as aki

    result = CliRunner().invoke(aki, ["quickstart", "--help"])
    assert result.exit_code == 0
    for option in ("--seeds", "--latents", "--include-dot", "--preset", "--output-dir"):
        assert option in result.output


def test_shared_stages_use_every_core_the_arms_use_side_by_side():
    smoke = get_preset("smoke")
    assert StudyOptions(preset=smoke, threads=2, workers=2).shared_threads == 4
    assert StudyOptions(preset=smoke, threads=3, workers=1).shared_threads == 3
    assert StudyOptions(preset=smoke, include_dot=True, workers=3).shared_threads == 3


def test_seeds_budgets_and_dot_give_one_run_per_combination_and_intervals_over_seeds(tmp_path):
    options = ["--preset", "smoke", "--seeds", "2", "--latents", "2,3", "--include-dot", "--workers", "1"]
    result = CliRunner().invoke(app, [*options, "-o", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["arms"] == ["causal", "mma", "dot"]
    assert sorted((r["latents"], r["seed"], r["arm"]) for r in results["runs"]) == sorted(
        (k, s, arm) for k in (2, 3) for s in (0, 1) for arm in ("causal", "mma", "dot")
    )
    assert "Student-t interval over 2 seeds" in results["interval"]
    for latents in (2, 3):
        overall = next(r for r in results["summary"] if r["latents"] == latents and r["family"] == "overall")
        runs = {
            (r["seed"], r["arm"]): r["accuracy"]["overall"]
            for r in results["runs"]
            if r["latents"] == latents
        }
        assert overall["mma"]["mean"] == pytest.approx((runs[0, "mma"] + runs[1, "mma"]) / 2)
        assert overall["delta_dot"]["mean"] == pytest.approx(
            (runs[0, "dot"] - runs[0, "causal"] + runs[1, "dot"] - runs[1, "causal"]) / 2
        )
        assert f"({latents} visual tokens, 2 seeds" in result.output
    dot = json.loads((tmp_path / "dot" / "config.json").read_text())
    assert dot["use_mma"] is False and dot["num_latents"] == 2
    assert (tmp_path / "runs" / "latents3_seed1" / "mma" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--latents", "0"], "visual token budgets must be >= 1"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--stop-after", "dpo"], "unknown stage 'dpo' to stop after"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path, arguments, message):
    result = CliRunner().invoke(app, ["-o", str(tmp_path), "--no-progress", *arguments])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("stage", "models", "listed", "stages_of_mma"),
    [
        ("pretrain", ["pretrained"], {"": "pretrained"}, None),
        (
            "sft",
            ["causal", "mma", "pretrained"],
            {", causal": "causal", ", mma": "mma"},
            ["vision", "pretrain", "sft", "sft"],
        ),
    ],
)
def test_the_study_stops_after_a_stage_with_the_models_so_far_and_no_evaluation(
    tmp_path, stage, models, listed, stages_of_mma
):
    options = [
        "--preset",
        "smoke",
        "--stop-after",
        stage,
        "--workers",
        "1",
        "-o",
        str(tmp_path),
        "--no-progress",
    ]
    result = CliRunner().invoke(app, options)
    assert result.exit_code == 0, result.output
    assert f"stopped after {stage}; nothing evaluated" in result.output
    assert f"seed 0, 4 visual tokens: {tmp_path / 'pretrained'}" in result.output or stage != "pretrain"
    assert sorted(path.name for path in tmp_path.iterdir() if (path / "config.json").is_file()) == sorted(
        models
    )
    assert not (tmp_path / "results.json").exists()
    assert not any(tmp_path.rglob("test_predictions.jsonl"))
    if stages_of_mma is not None:
        record = json.loads((tmp_path / "mma" / "aki_training.json").read_text())["stages"]
        assert [entry["stage"] for entry in record] == stages_of_mma
