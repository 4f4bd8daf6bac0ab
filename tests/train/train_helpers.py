"""Helpers of the training tests: a few-step config of a fresh tiny AKI on synthetic scenes."""

from __future__ import annotations

from pathlib import Path

from aki.train.config import TrainConfig, load_config

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every=0"]


def tiny_config(stage: str, output_dir: Path, *overrides: str) -> TrainConfig:
    """A few-step run of a fresh tiny AKI on synthetic scenes made on the fly (no files), quiet, overridable."""
    base = [
        f"output_dir={output_dir}",
        "steps=4",
        "batch_size=4",
        "model.init=null",
        "model.tokenizer=synthetic",
        "model.builder=aki_tiny",
        "model.allow_untrained_vision_tower=true",  # a fresh random tower: these tests train no vision stage
        "data.sources=[{format: synthetic, size: 64, image_size: 32}]",
        "optim.warmup_steps=0",
        "optim.lr=2e-3",
    ]
    return load_config(stage, overrides=[*base, *QUIET, *overrides])
