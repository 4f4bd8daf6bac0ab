"""The training record of a saved model: which recipe stages made it, so that a later stage can check its start.

Every ``final/`` directory a recipe writes holds ``aki_training.json``: the stages of its ``model.init`` (read
from the init's own record) followed by this one, each with the settings a later reader needs (its stage,
start, steps, attention, whether it trained the vision tower, the image order of its samples and how many words
it added to the vocabulary). Two readers:

* :func:`check_vision_tower`: a stage that freezes the vision tower refuses a tower that was never trained, a
  fresh model's or one whose record starts from a fresh build and has no stage that trained the tower (the
  by-hand path that skipped ``aki train vision``). A directory without a record (a converted or downloaded
  checkpoint) is taken as it is.
* :func:`trained_order`: evaluation asks a question with the images where the model's fine-tuning put them.

Example:
    >>> stages = read_stages("runs/sft-tiny/final")  # doctest: +SKIP
    >>> [stage["stage"] for stage in stages]  # doctest: +SKIP
    ['vision', 'pretrain', 'sft', 'sft']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import TrainConfig

RECORD_FILE = "aki_training.json"


class UntrainedVisionTower(RuntimeError):
    """A stage would freeze a vision tower that was never trained (see :func:`check_vision_tower`)."""


def read_stages(model_dir: str | Path | None) -> list[dict[str, Any]] | None:
    """The stages recorded in a saved model directory, oldest first; None if it has no record."""
    if model_dir is None:
        return None
    path = Path(model_dir) / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["stages"]


def stage_entry(config: TrainConfig, *, trains_vision_tower: bool, added_words: int = 0) -> dict[str, Any]:
    """What the record keeps of one finished stage."""
    return {
        "stage": config.stage,
        "init": config.model.init,
        "output_dir": config.output_dir,
        "steps": config.steps,
        "attention": None if config.stage == "vision" else config.model.attention,
        "trains_vision_tower": trains_vision_tower,
        "order": None if config.stage == "vision" else config.data.order,
        "added_words": added_words,
    }


def write_record(final_dir: str | Path, config: TrainConfig, entry: dict[str, Any]) -> Path:
    """Write ``final_dir/aki_training.json``: the init's stages, then ``entry``."""
    path = Path(final_dir) / RECORD_FILE
    stages = [*(read_stages(config.model.init) or []), entry]
    path.write_text(json.dumps({"stages": stages}, indent=1) + "\n")
    return path


def vision_tower_trained(config: TrainConfig) -> bool | None:
    """Whether the tower the stage starts from was trained: False for a fresh model or a recorded chain that
    began with one and never trained the tower, True if a recorded stage trained it, None when unknown (no record).
    """
    if config.model.init is None:
        return False
    stages = read_stages(config.model.init)
    if stages is None:
        return None
    if any(stage["trains_vision_tower"] for stage in stages):
        return True
    return False if stages[0]["init"] is None else None


def check_vision_tower(config: TrainConfig) -> None:
    """Raise :class:`UntrainedVisionTower` when the stage keeps a never-trained vision tower frozen (unless
    ``model.allow_untrained_vision_tower``); the message names the ways out.
    """
    model = config.model
    if (
        model.train_vision_tower
        or model.allow_untrained_vision_tower
        or vision_tower_trained(config) is not False
    ):
        return
    start = "a fresh model (model.init is null)" if model.init is None else f"model.init {model.init!r}"
    raise UntrainedVisionTower(
        f"the vision tower of {start} was never trained, and this {config.stage} stage keeps it frozen "
        "(model.train_vision_tower=false): the model would learn from the features of a random tower. Train the "
        "tower first (`aki train vision`, then model.init=runs/vision-tiny/final), or train it here "
        "(model.train_vision_tower=true), or set model.allow_untrained_vision_tower=true to go on anyway"
    )


def trained_order(model_dir: str | Path) -> str | None:
    """The image order (``image_first``, ``text_first``, ``as_is``) of the last fine-tuning stage on record, or
    None (no record, or no fine-tuning stage).
    """
    stages = read_stages(model_dir) or []
    return next((stage["order"] for stage in reversed(stages) if stage["stage"] == "sft"), None)


__all__ = [
    "RECORD_FILE",
    "UntrainedVisionTower",
    "check_vision_tower",
    "read_stages",
    "stage_entry",
    "trained_order",
    "vision_tower_trained",
    "write_record",
]
