"""Runs that never mix or lose: output dirs, atomic re-saves, resumes that execute nothing, bad samples
skipped by name, divergence stopped before a save, histories a kill left half-written, strict loading.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from train_helpers import tiny_config
from typer.testing import CliRunner

from aki.train import checkpoint as checkpoint_module
from aki.train import run, run_sft
from aki.train.checkpoint import list_checkpoints
from aki.train.cli import app
from aki.train.recipe import DivergedError


def _history_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_a_run_never_trains_into_another_runs_output_dir(tmp_path):
    first = run_sft(tiny_config("sft", tmp_path, "steps=2"))
    with pytest.raises(FileExistsError, match=r"already exists and is not empty .*--resume.*--overwrite"):
        run_sft(tiny_config("sft", tmp_path, "steps=3", "optim.lr=1e-3"))
    assert _history_steps(tmp_path) == [1, 2]  # the first run's files are untouched
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]
    with pytest.raises(ValueError, match=r"other settings than this run's \(optim.lr: 0.002 -> 0.001\)"):
        run_sft(tiny_config("sft", tmp_path, "steps=3", "optim.lr=1e-3", "checkpoint.resume=auto"))

    second = run_sft(tiny_config("sft", tmp_path, "steps=1", "seed=1", "overwrite_output_dir=true"))
    assert _history_steps(tmp_path) == [1]  # the new run only: nothing of the first one is left
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert second.losses[0] != first.losses[0]

    with pytest.raises(FileNotFoundError, match=r"no valid checkpoint found in .*nothing to resume"):
        run_sft(tiny_config("sft", tmp_path / "new", "checkpoint.resume=auto"))


class _Killed(BaseException):
    """The process dying at that point."""


def _broken_llava(tmp_path: Path, files) -> Path:
    records = [json.loads(line) for line in files.questions.read_text().splitlines()]
    for record in records:
        record["image"] = str(files.questions.parent / record["image"])
    records[1]["image"] = str(tmp_path / "missing.png")
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_a_step_saved_again_keeps_its_old_copy_until_the_new_one_is_in_place(
    tmp_path, synthetic_files, monkeypatch
):
    data = _broken_llava(tmp_path, synthetic_files)
    source = f"data.sources=[{{format: llava, name: broken, path: {data}}}]"
    overrides = [
        "steps=3",
        "batch_size=1",
        source,
        "data.shuffle=false",
        "checkpoint.every=1",
        "checkpoint.keep=1",
    ]
    config = tiny_config("sft", tmp_path / "run", *overrides, "data.on_bad_sample=error")
    real_replace = checkpoint_module.os.replace

    def replace(source: Path, target: Path) -> None:  # killed between moving the old copy away and the new in
        if str(source).endswith(".tmp") and Path(f"{target}.old").exists():
            raise _Killed
        real_replace(source, target)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    with pytest.raises(_Killed):  # step 2's sample is missing: the run saves step 1 again, and dies doing it
        run_sft(config)
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001.old", "step_00000001.tmp"]

    Image.new("RGB", (32, 32)).save(tmp_path / "missing.png")
    resumed = run_sft(tiny_config("sft", tmp_path / "run", *overrides, "checkpoint.resume=auto"))
    assert resumed.sample_ids == [["broken:train_0_000001"], ["broken:train_0_000002"]]  # from step 1, not 0
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003"]


def test_bad_samples_of_every_kind_are_skipped_by_name(tmp_path, synthetic_files):
    good = json.loads(synthetic_files.questions.read_text().splitlines()[0])
    good["image"] = str(synthetic_files.questions.parent / good["image"])
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 M pixels in 17 KB
    Image.new("1", (7000, 7000)).save(tmp_path / "large.png")  # 49 M: under PIL's limit, above aki's
    turns = good["conversations"]
    records = [
        good,
        5,
        {**good, "id": "number", "image": 5},
        {**good, "id": "bomb", "image": str(tmp_path / "bomb.png")},
        {**good, "id": "large", "image": str(tmp_path / "large.png")},
        {**good, "id": "value", "conversations": [{**turns[0], "value": 5}, turns[1]]},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    source = f"data.sources=[{{format: llava, name: mixed, path: {path}}}]"
    result = run_sft(
        tiny_config("sft", tmp_path / "run", "steps=2", "batch_size=6", source, "data.shuffle=false")
    )
    reasons = dict(result.skipped[:5])
    assert sorted(reasons) == ["mixed:1", "mixed:bomb", "mixed:large", "mixed:number", "mixed:value"]
    assert reasons["mixed:1"] == "the record is not a JSON object"
    assert "'image' must be a path or a list of paths, got 5" in reasons["mixed:number"]
    assert "could be decompression bomb" in reasons["mixed:bomb"]
    assert "7000 x 7000 = 49000000 pixels, above the limit of 40000000" in reasons["mixed:large"]
    assert "a turn's 'value' must be a string" in reasons["mixed:value"]
    assert result.sample_ids == [[f"mixed:{good['id']}"]] * 2 and len(result.losses) == 2  # the run went on


class _Marker:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_never_unpickles_what_a_checkpoint_holds(tmp_path):
    run(tiny_config("sft", tmp_path, "steps=2"), stop_at=1)
    checkpoint = tmp_path / "checkpoints" / "step_00000001"
    assert (checkpoint / "scheduler.json").is_file()
    assert sorted(p.name for p in checkpoint.glob("*.pkl")) == ["random_states_0.pkl"]  # read weights-only
    marker = tmp_path / "code-ran"
    resume = tiny_config("sft", tmp_path, "steps=2", "checkpoint.resume=auto")

    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(ValueError, match=r"holds \['custom_checkpoint_0.pkl'\]: pickles that aki does not"):
        run_sft(resume)
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    torch.save({"state": _Marker(marker)}, checkpoint / "optimizer.bin")
    with pytest.raises(ValueError, match="holds a file that is not plain tensors; refused to unpickle it"):
        run_sft(resume)
    assert not marker.exists()


def test_a_loss_that_is_not_finite_stops_the_run_before_it_saves(tmp_path):
    config = tiny_config("sft", tmp_path, "steps=3", "optim.lr=1e30", "optim.max_grad_norm=null")
    with pytest.raises(
        DivergedError, match=r"step 2: the loss is nan .* stopped before the update and without"
    ):
        run_sft(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "history.jsonl"]  # no weights saved


def test_a_half_written_history_line_does_not_stop_a_resume(tmp_path):
    run(tiny_config("sft", tmp_path, "steps=3"), stop_at=2)
    with (tmp_path / "history.jsonl").open("a") as history:
        history.write('{"step": 3, "lo')  # what a kill while writing step 3 leaves
    resumed = run_sft(tiny_config("sft", tmp_path, "steps=3", "checkpoint.resume=auto"))
    assert len(resumed.losses) == 3 and _history_steps(tmp_path) == [1, 2, 3]


def test_a_corrupt_data_file_is_named(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": ')
    source = f"data.sources=[{{format: llava, path: {path}}}]"
    with pytest.raises(ValueError, match=r"data.json: not a valid JSON list \(Expecting value: line 1"):
        run_sft(tiny_config("sft", tmp_path / "run", source))


def test_the_loaders_refuse_weights_that_do_not_fit_the_config(tmp_path):
    from aki.serve.cli import app as serve_app

    final = run_sft(tiny_config("sft", tmp_path / "run", "steps=1")).final_dir
    weights = load_file(final / "model.safetensors")
    dropped = "language_model.model.layers.0.mlp.down_proj.weight"
    weights.pop(dropped)
    save_file(weights, final / "model.safetensors", metadata={"format": "pt"})
    result = CliRunner().invoke(serve_app, ["chat", str(final)], input="/quit\n")
    shown = " ".join(result.output.replace("│", " ").split())  # typer's error box, unwrapped
    assert result.exit_code == 2
    assert f"tensors missing (they would be initialised at random): {dropped}" in shown
    with pytest.raises(
        ValueError, match=f"does not hold the model its config describes; tensors missing .*{dropped}"
    ):
        run_sft(tiny_config("sft", tmp_path / "next", "steps=1", f"model.init={final}"))


def test_training_from_a_missing_init_says_so_in_one_line(tmp_path):
    missing = tmp_path / "pretrained" / "final"
    result = CliRunner().invoke(app, ["sft", f"output_dir={tmp_path / 'run'}", f"model.init={missing}"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: model.init '{missing}' is not a saved model directory")
    assert "Traceback" not in result.output
    resume = CliRunner().invoke(app, ["sft", f"output_dir={tmp_path / 'none'}", "--resume"])
    assert resume.exit_code == 2 and "no valid checkpoint found" in resume.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.max_grad_norm=-1", "optim.max_grad_norm must be null .* or a finite number > 0, got -1.0"),
        ("optim.min_lr_ratio=-2", r"optim.min_lr_ratio must be in \[0, 1\], got -2.0"),
        ("optim.lr=inf", "optim.lr must be a finite number >= 0, got inf"),
        ("optim.lr=-1", "optim.lr must be a finite number >= 0, got -1.0"),
        ("checkpoint.every=-1", r"checkpoint.every must be >= 0 \(0: only at the end\), got -1"),
        ("checkpoint.keep=-5", "checkpoint.keep must be >= 1, got -5"),
        ("seed=-1", r"seed must be an integer in \[0, 2\*\*32 - 1\], got -1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(override, message):
    result = CliRunner().invoke(app, ["sft", "--print-config", override])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(message, " ".join(result.output.replace("│", " ").split())), result.output
