"""The embedded default by hand: vision -> pretrain -> sft as packaged recipes, the training record that chains
them, and the refusal to freeze a vision tower that was never trained.
"""

from __future__ import annotations

import pytest
from train_helpers import QUIET, tiny_config
from typer.testing import CliRunner

from aki.quickstart.presets import STAGES, get_preset
from aki.quickstart.study import write_data
from aki.train import run
from aki.train.cli import app
from aki.train.config import load_config
from aki.train.lineage import RECORD_FILE, UntrainedVisionTower, read_stages, trained_order

SMOKE_VISION = [
    "data.sources=[{format: synthetic, size: 8, image_size: 32}]",
    "steps=1",
    "batch_size=4",
    "logging.progress_bar=false",
]


def packaged(stage: str, *overrides: str):
    """A packaged by-hand stage: vision.yaml, pretrain.yaml, sft_curriculum.yaml or sft.yaml."""
    recipe = stage.removesuffix("_curriculum")
    return load_config(recipe, None if stage == recipe else f"{stage}.yaml", overrides)


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    """A smoke-sized vision stage's final model (the tower trained one step)."""
    out = tmp_path_factory.mktemp("vision")
    config = get_preset("smoke").config("vision", [f"output_dir={out}", *SMOKE_VISION])
    return run(config).final_dir


def test_the_packaged_stages_are_the_quickstarts_with_its_files_drawn_on_the_fly():
    quickstart = get_preset("default")
    for stage in STAGES:
        by_hand, study = packaged(stage).to_dict(), quickstart.config(stage).to_dict()
        for config in (by_hand, study):  # where they write, start and log, and where the data comes from
            for key in ("output_dir", "checkpoint", "logging"):
                config.pop(key)
            config["model"].pop("init")
            config["data"].pop("root")
        sources = by_hand["data"].pop("sources"), study["data"].pop("sources")
        assert by_hand == study, stage
        drawn = [(s["name"], s["family"], s["size"], s["image_size"], s["weight"]) for s in sources[0]]
        files = [(s["name"], s["path"], s["weight"]) for s in sources[1]]
        if stage == "vision":
            assert drawn == [(None, None, 60000, 48, 1.0)] and files == [("scenes", "train.jsonl", 1.0)]
        elif stage == "pretrain":
            assert drawn == [("captions", None, 60000, 48, 1.0)]
            assert files == [("captions", "train_captions.jsonl", 1.0)]
        else:  # each family's questions of the same 60,000 scenes: train_<family>.jsonl
            assert [(name, f"train_{name}.jsonl", weight) for name, _, _, _, weight in drawn] == files
            assert all(family == name and size == 10000 for name, family, size, _, _ in drawn)
    chain = [packaged(stage) for stage in STAGES]
    assert [config.model.init for config in chain[1:]] == [
        f"{config.output_dir}/final" for config in chain[:-1]
    ]


def test_drawn_on_the_fly_the_stages_train_exactly_as_on_the_quickstarts_files(tmp_path, vision_model):
    """Same images, same text, same order: the same losses, to the last bit."""
    smoke = get_preset("smoke")
    data = write_data(tmp_path / "data", smoke, seed=0)  # 48 training scenes at 32 px: 8 questions per family
    sizes = {"pretrain": 48, "sft": 8}
    for stage in ("pretrain", "sft"):
        study = smoke.config(stage, [f"output_dir={tmp_path / stage}", f"data.root={data}", *QUIET])
        sources = [
            f"{{format: synthetic, family: {s.name}, size: 8, image_size: 32, name: {s.name}, weight: {s.weight}}}"
            for s in study.data.sources
        ]
        if stage == "pretrain":
            sources = ["{format: synthetic, size: 48, image_size: 32, name: captions}"]
        by_hand = packaged(
            stage,
            f"output_dir={tmp_path / (stage + '-by-hand')}",
            f"steps={study.steps}",
            f"batch_size={study.batch_size}",
            "optim.warmup_steps=0",
            f"data.sources=[{', '.join(sources)}]",
            *QUIET,
        )
        assert sum(s.size for s in by_hand.data.sources) == sizes[stage] * len(by_hand.data.sources)
        for config in (study, by_hand):
            config.model.init = str(vision_model)
        losses = run(study).losses
        assert len(losses) == study.steps == 2 and losses[0] > 1.0
        assert run(by_hand).losses == losses


def test_every_final_model_records_the_stages_that_made_it(tmp_path, vision_model):
    assert [stage["stage"] for stage in read_stages(vision_model)] == ["vision"]
    pretrain = run(tiny_config("pretrain", tmp_path / "pt", "steps=1", f"model.init={vision_model}"))
    sft = run(
        tiny_config(
            "sft", tmp_path / "sft", "steps=1", f"model.init={pretrain.final_dir}", "data.order=as_is"
        )
    )
    stages = read_stages(sft.final_dir)
    assert [(s["stage"], s["init"], s["trains_vision_tower"]) for s in stages] == [
        ("vision", None, True),
        ("pretrain", str(vision_model), False),
        ("sft", str(pretrain.final_dir), False),
    ]
    assert (stages[2]["steps"], stages[2]["attention"], stages[2]["order"]) == (1, "mma", "as_is")
    assert trained_order(sft.final_dir) == "as_is" and trained_order(pretrain.final_dir) is None


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_a_stage_refuses_to_freeze_a_fresh_random_tower(tmp_path, stage):
    config = tiny_config(stage, tmp_path, "model.allow_untrained_vision_tower=false")
    with pytest.raises(UntrainedVisionTower, match=r"vision tower of a fresh model .* was never trained"):
        run(config)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was built or written
    trained_here = tiny_config(stage, tmp_path / "ok", "steps=1", "model.train_vision_tower=true")
    trained_here.model.allow_untrained_vision_tower = False
    assert run(trained_here).final_dir is not None  # training the tower in this stage is fine


def test_a_chain_that_never_trained_its_tower_is_refused_and_an_unrecorded_model_is_taken_as_it_is(tmp_path):
    blind = run(tiny_config("pretrain", tmp_path / "blind", "steps=1"))  # allowed once, and recorded as such
    sft = tiny_config("sft", tmp_path / "sft", "steps=1", f"model.init={blind.final_dir}")
    sft.model.allow_untrained_vision_tower = False
    with pytest.raises(UntrainedVisionTower, match="was never trained"):
        run(sft)
    (blind.final_dir / RECORD_FILE).unlink()  # e.g. a converted checkpoint: nothing says what its tower saw
    assert run(sft).final_dir is not None


def test_the_cli_names_the_way_out_without_a_traceback(tmp_path):
    arguments = ["pretrain", "model.init=null", "model.tokenizer=synthetic", f"output_dir={tmp_path}", *QUIET]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2
    assert "was never trained" in result.output and "aki train vision" in result.output
    assert "Traceback" not in result.output


def test_print_config_lists_only_the_fields_a_source_reads():
    llava = CliRunner().invoke(app, ["sft", "--print-config", "data.sources=[{format: llava, path: a.json}]"])
    sources = llava.output.split("sources:")[1].split("max_length")[0]
    assert "path: a.json" in sources and "image_root" in sources
    assert not any(key in sources for key in ("size:", "split:", "seed:", "image_size:", "family:"))
    synthetic = CliRunner().invoke(app, ["pretrain", "--print-config"]).output.split("sources:")[1]
    assert (
        "size: 60000" in synthetic.split("max_length")[0] and "path:" not in synthetic.split("max_length")[0]
    )
