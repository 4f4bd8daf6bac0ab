"""The training recipe on a tiny AKI: learning, exact resume, accumulation and ranks, MMA vs causal, bad data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from train_helpers import tiny_config

from aki.mma import IGNORE_INDEX, mma_mask
from aki.models import AkiForConditionalGeneration, AkiProcessor
from aki.train import DataError, run, run_pretrain, run_sft
from aki.train.checkpoint import list_checkpoints


def test_pretraining_loss_starts_at_chance_and_goes_down(tmp_path):
    result = run_pretrain(tiny_config("pretrain", tmp_path, "steps=12", "batch_size=8"))
    vocabulary = len(AkiProcessor.from_pretrained(result.final_dir).tokenizer)
    # A random init predicts about uniformly over the vocabulary: loss ~ ln(V) (102 words: 4.62).
    assert result.losses[0] == pytest.approx(math.log(vocabulary), abs=0.1)
    assert len(result.losses) == 12
    assert sum(result.losses[-3:]) / 3 < result.losses[0] - 0.5


def test_seeded_first_losses_are_pinned(tmp_path):
    """A fresh tiny AKI, seed 0, one thread: the first three losses of each stage, as measured (torchtune style).

    A change to the model, the data order, the template or the loss shows up here first.
    """
    pretrain = run_pretrain(tiny_config("pretrain", tmp_path / "pt", "steps=3", "batch_size=8"))
    assert pretrain.losses == pytest.approx([4.433736, 4.132935, 3.991513], abs=5e-6)
    mma = run_sft(tiny_config("sft", tmp_path / "mma", "steps=3", "model.attention=mma"))
    assert mma.losses == pytest.approx([4.379275, 4.193993, 3.932262], abs=5e-6)
    causal = run_sft(tiny_config("sft", tmp_path / "causal", "steps=3", "model.attention=causal"))
    assert causal.losses == pytest.approx([4.379297, 4.193916, 3.932299], abs=5e-6)  # MMA: media rows


def test_final_model_and_processor_load_with_from_pretrained(tmp_path):
    result = run_sft(tiny_config("sft", tmp_path, "steps=1"))
    model = AkiForConditionalGeneration.from_pretrained(result.final_dir)
    processor = AkiProcessor.from_pretrained(result.final_dir)
    assert model.config.use_mma is True
    assert processor.num_image_tokens == model.config.num_latents == 4
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 1
    assert [json.loads(line)["step"] for line in (tmp_path / "history.jsonl").read_text().splitlines()] == [1]


def test_history_and_tensorboard_record_loss_lr_grad_norm_and_tokens_per_second(tmp_path):
    config = tiny_config("sft", tmp_path, "steps=2", "optim.warmup_steps=4", "optim.lr=1e-3")
    config.logging.tensorboard = True
    run_sft(config)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [entry["lr"] for entry in history] == pytest.approx([0.25e-3, 0.5e-3])  # warmup 1/4, 2/4
    assert all(entry["grad_norm"] > 0 and entry["tokens_per_s"] > 0 for entry in history)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_resume_after_half_the_steps_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    whole = run_sft(tiny_config("sft", tmp_path / "whole", "steps=4"))
    first = run(tiny_config("sft", tmp_path / "halves", "steps=4"), stop_at=2)
    assert first.final_dir is None
    assert [p.name for p in list_checkpoints(tmp_path / "halves")] == ["step_00000002"]
    second = run_sft(tiny_config("sft", tmp_path / "halves", "steps=4", "checkpoint.resume=auto"))
    assert second.losses == whole.losses  # bit for bit: weights, optimizer, scheduler, RNG and data position
    assert second.sample_ids == whole.sample_ids[2:]


def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(tmp_path):
    eight = run_sft(tiny_config("sft", tmp_path / "eight", "steps=3", "batch_size=8"))
    two_by_four = run_sft(
        tiny_config("sft", tmp_path / "acc", "steps=3", "batch_size=4", "gradient_accumulation_steps=2")
    )
    assert two_by_four.losses == pytest.approx(eight.losses, abs=1e-5)
    assert two_by_four.sample_ids == eight.sample_ids


def test_mma_and_causal_fine_tuning_differ_only_through_the_mask(tmp_path):
    mma = run_sft(tiny_config("sft", tmp_path / "mma", "steps=2", "model.attention=mma"))
    causal = run_sft(tiny_config("sft", tmp_path / "causal", "steps=2", "model.attention=causal"))
    assert mma.sample_ids == causal.sample_ids  # same data order
    assert mma.losses[0] != causal.losses[0]  # MMA changed the media rows

    # Same init: the first MMA loss is the causal model's initial weights given the dense MMA mask.
    initial = run(tiny_config("sft", tmp_path / "init", "steps=1", "model.attention=causal", "optim.lr=0"))
    model = AkiForConditionalGeneration.from_pretrained(initial.final_dir)
    processor = AkiProcessor.from_pretrained(initial.final_dir)
    from aki.data.encoding import ChatEncoder, collate
    from aki.data.sources import SyntheticScenes

    source = SyntheticScenes(size=64, image_size=32)
    names = {source[i].id: i for i in range(len(source))}
    encoder = ChatEncoder(processor, max_length=256)
    encoded = [encoder.encode(source[names[sample_id]]) for sample_id in mma.sample_ids[0]]
    batch = collate(encoded, processor=processor)
    dense = mma_mask(batch["mma_roles"], batch["attention_mask"])  # (B, 1, L, L)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=dense,
            position_ids=positions,
        ).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    assert float(loss) == pytest.approx(mma.losses[0], abs=1e-5)
    assert initial.losses[0] == pytest.approx(causal.losses[0], abs=1e-6)


def test_pretraining_with_mma_is_causal_because_captions_are_response(tmp_path):
    mma = run_pretrain(tiny_config("pretrain", tmp_path / "mma", "steps=2", "model.attention=mma"))
    causal = run_pretrain(tiny_config("pretrain", tmp_path / "causal", "steps=2", "model.attention=causal"))
    assert mma.losses == causal.losses


def test_lora_trains_adapters_and_the_resampler_and_saves_a_merged_model(tmp_path):
    result = run_sft(tiny_config("sft", tmp_path, "steps=2", "model.lora={r: 4, alpha: 8, dropout: 0.0}"))
    model = AkiForConditionalGeneration.from_pretrained(result.final_dir)
    assert not any("lora" in name for name in model.state_dict())
    assert result.losses[1] != result.losses[0]


# --------------------------------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------------------------------


def test_two_cpu_processes_match_one_process_on_the_combined_batch(tmp_path):
    one = run_sft(tiny_config("sft", tmp_path / "one", "steps=3", "batch_size=8"))
    two = tiny_config("sft", tmp_path / "two", "steps=3", "batch_size=4", "logging.record_samples=true")
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(two.to_dict()))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    completed = subprocess.run(
        [*launch, "-m", "aki.train.cli", "sft", "--config", str(config_file)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [entry["loss"] for entry in history] == pytest.approx(one.losses, abs=1e-5)
    ranks = [
        [
            json.loads(line)["ids"]
            for line in (tmp_path / "two" / "samples" / f"rank{r}.jsonl").read_text().splitlines()
        ]
        for r in (0, 1)
    ]
    for step, combined in enumerate(one.sample_ids):
        assert not set(ranks[0][step]) & set(ranks[1][step])  # disjoint samples
        assert ranks[0][step] + ranks[1][step] == combined


# --------------------------------------------------------------------------------------------------
# Bad data
# --------------------------------------------------------------------------------------------------


def _broken_llava(files, tmp_path: Path, *, only_missing: bool = False) -> Path:
    """The synthetic LLaVA file with bad records: 1 has a missing image, 2 a corrupt one, 3 two <image> marks."""
    records = [json.loads(line) for line in files.questions.read_text().splitlines()]
    for record in records:
        record["image"] = str(files.questions.parent / record["image"])
    records[1]["image"] = str(tmp_path / "missing.png")
    if not only_missing:
        (tmp_path / "corrupt.png").write_bytes(b"not a png")
        records[2]["image"] = str(tmp_path / "corrupt.png")
        records[3]["conversations"][0]["value"] = "<image>\n" + records[3]["conversations"][0]["value"]
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _llava_source(path: Path) -> str:
    return f"data.sources=[{{format: llava, name: broken, path: {path}}}]"


def test_bad_samples_are_skipped_and_counted(tmp_path, synthetic_files):
    data = _broken_llava(synthetic_files, tmp_path)
    config = tiny_config("sft", tmp_path / "run", "steps=3", _llava_source(data), "data.shuffle=false")
    result = run_sft(config)
    reasons = dict(result.skipped)
    assert sorted(reasons) == ["broken:train_0_000001", "broken:train_0_000002", "broken:train_0_000003"]
    assert "missing.png' does not exist" in reasons["broken:train_0_000001"]
    assert "corrupt.png' could not be read as an image" in reasons["broken:train_0_000002"]
    assert "2 <image> placeholders but the sample has 1 images" in reasons["broken:train_0_000003"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_samples"] == 3
    assert result.sample_ids[0] == ["broken:train_0_000000"]  # positions 1..3 of step 1 were dropped
    assert len(result.losses) == 3


def test_samples_longer_than_max_length_are_skipped(tmp_path):
    # The 8 synthetic chats are 47 to 64 tokens long; 4 of them are longer than 48. Two steps of 4 = one epoch.
    sources = "data.sources=[{format: synthetic, size: 8, image_size: 32}]"
    result = run_sft(tiny_config("sft", tmp_path, "steps=2", "data.max_length=48", sources))
    assert len(result.skipped) == 4
    assert all("exceed max_length=48" in reason for _, reason in result.skipped)
    assert sum(len(ids) for ids in result.sample_ids) == 4


def test_bad_data_under_the_error_policy_stops_with_its_name_after_a_checkpoint(tmp_path, synthetic_files):
    data = _broken_llava(synthetic_files, tmp_path, only_missing=True)
    config = tiny_config(
        "sft", tmp_path / "run", "steps=3", "batch_size=1", _llava_source(data), "data.shuffle=false"
    )
    config.data.on_bad_sample = "error"
    with pytest.raises(
        DataError, match=r"stopped at step 1 .*bad sample 'broken:train_0_000001'.*does not exist"
    ):
        run_sft(config)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000001"]

    Image.new("RGB", (32, 32)).save(tmp_path / "missing.png")  # fix the data, resume from step 1
    config.checkpoint.resume = "auto"
    resumed = run_sft(config)
    assert resumed.sample_ids == [["broken:train_0_000001"], ["broken:train_0_000002"]]
    assert len(resumed.losses) == 3
