"""Presets of the quickstart study: folders of packaged recipe configs, one YAML per stage, plus the study's sizes.

``train/configs/quickstart/`` is the ``default`` preset (the CPU run of ``aki quickstart``): ``study.yaml``
(how much data, how many test questions, the evaluation batch), then ``vision.yaml``, ``pretrain.yaml``,
``sft_curriculum.yaml`` and ``sft.yaml``, the configs of :func:`aki.train.run` that the study runs in that
order. ``smoke/`` (seconds, for tests) and ``gpu/`` (a larger model and more steps) hold the same files, each
updating the default one (``base:``). A user runs the same stages by hand with ``aki train vision --config
quickstart/vision.yaml data.root=...`` and so on.

Example:
    >>> preset = get_preset("smoke")
    >>> preset.config("sft", ["model.attention=causal"]).model.attention
    'causal'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..train.config import CONFIG_DIR, TrainConfig, load_config

PRESET_DIR = CONFIG_DIR / "quickstart"
STAGES = ("vision", "pretrain", "sft_curriculum", "sft")  # in the order the study runs them
PRESETS = ("default", "smoke", "gpu")
# Where a study can stop (``--stop-after``), in the order it runs: after the data, the vision tower,
# pre-training, the arms' curriculum, or the arms' whole fine-tuning (then nothing is evaluated).
STOP_STAGES = ("data", *STAGES)


@dataclass(frozen=True)
class Preset:
    """One study size: its config folder and the sizes the study itself uses (data and evaluation)."""

    name: str
    train_samples: int
    test_per_family: int
    eval_batch_size: int

    @property
    def directory(self) -> Path:
        return PRESET_DIR if self.name == "default" else PRESET_DIR / self.name

    def config_file(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown quickstart stage {stage!r}; expected one of {list(STAGES)}")
        return self.directory / f"{stage}.yaml"

    def config(self, stage: str, overrides: Sequence[str] = ()) -> TrainConfig:
        """The recipe config of ``stage`` (one of :data:`STAGES`) with ``key=value`` overrides."""
        recipe = stage.removesuffix("_curriculum")
        return load_config(recipe, self.config_file(stage), overrides)

    def to_dict(self) -> dict:
        stages = {stage: self.config(stage).to_dict() for stage in STAGES}
        return {"name": self.name, **{k: getattr(self, k) for k in _STUDY_KEYS}, "stages": stages}


_STUDY_KEYS = ("train_samples", "test_per_family", "eval_batch_size")


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one of :data:`PRESETS`), read from its ``study.yaml``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    directory = PRESET_DIR if name == "default" else PRESET_DIR / name
    study = yaml.safe_load((directory / "study.yaml").read_text())
    unknown = sorted(set(study) - set(_STUDY_KEYS))
    if unknown:
        raise ValueError(f"{directory / 'study.yaml'}: unknown key(s) {unknown}; known: {list(_STUDY_KEYS)}")
    bad = {key: value for key, value in study.items() if not isinstance(value, int) or value < 1}
    if bad:
        raise ValueError(f"{directory / 'study.yaml'}: these sizes must be whole numbers >= 1: {bad}")
    return Preset(name=name, **study)


__all__ = ["PRESETS", "PRESET_DIR", "STAGES", "STOP_STAGES", "Preset", "get_preset"]
