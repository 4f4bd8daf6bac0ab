"""Checkpoints written atomically and loaded without executing anything.

A checkpoint is accelerate's state of the model and optimizer (safetensors weights, the optimizer's tensors,
the RNG of every rank), the scheduler's state as ``scheduler.json``, the run's config as ``config.json`` and
``trainer_state.json`` (step, loss history, data position). It is saved into ``step_XXXXXXXX.tmp`` and renamed
to ``step_XXXXXXXX`` only when complete; a run killed while saving leaves a ``.tmp`` folder that is never
resumed from and is removed by the next save. Saving a step that exists already moves the old copy aside as
``step_XXXXXXXX.old`` until the new one is in place, and a ``.old`` whose step is missing (a run killed between
the two renames) is resumed from like the step itself.

Loading unpickles nothing that could run code: the scheduler is JSON, accelerate's tensor files are read with
``torch.load(weights_only=True)``, and a checkpoint holding a pickle aki does not write (accelerate's
``custom_checkpoint_*.pkl``) is refused before anything is read.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
CONFIG_FILE = "config.json"
_NAME = re.compile(r"^step_(\d{8})(\.old)?$")
_RNG_STATES = re.compile(r"^random_states_\d+\.pkl$")  # accelerate's, read with weights_only=True
# What a run writes into its output_dir (what overwrite_output_dir deletes).
RUN_FILES = ("checkpoints", "final", "samples", "tensorboard", "config.yaml", "history.jsonl", "summary.json")


@dataclass
class TrainState:
    """What a checkpoint adds to accelerate's state.

    ``losses`` has one entry per optimizer step since the start of training; ``shard_states`` maps each
    (rank, worker) slot to its place in every webdataset source; ``world_size`` and ``num_workers`` tell which
    slots those were.
    """

    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    skipped: int = 0
    world_size: int = 1
    num_workers: int = 0
    shard_states: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        return cls(**json.loads(text))


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a step's ``.old`` copy only when the step itself is missing)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in sorted(root.iterdir(), key=lambda p: p.name.endswith(".old")):  # the step itself first
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            by_step.setdefault(int(match[1]), path)
    return [by_step[step] for step in sorted(by_step)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None, ``auto`` (the latest complete one) or a checkpoint directory;
    ``FileNotFoundError`` when there is none to resume from.
    """
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"no valid checkpoint found in {str(checkpoint_root(output_dir))!r}: nothing to resume (start "
                "without --resume / checkpoint.resume, or give output_dir of the run to continue)"
            )
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete checkpoint (no {STATE_FILE} in it)")
    return path


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    state: TrainState,
    *,
    scheduler: Any,
    config: dict[str, Any],
    keep: int,
) -> Path:
    """Save accelerate's state, the scheduler, ``config`` and ``state`` as ``checkpoints/step_XXXXXXXX``; keep
    the newest ``keep``. Every rank must call it (the model and optimizer may be sharded).
    """
    final = checkpoint_root(output_dir) / f"step_{state.step:08d}"
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        for stale in checkpoint_root(output_dir).glob("step_*.tmp"):  # this save's, or a killed run's
            shutil.rmtree(stale, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        (temporary / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        (temporary / STATE_FILE).write_text(state.to_json())  # last: it marks the checkpoint complete
        _replace(temporary, final)
        for old in list_checkpoints(output_dir)[: -max(keep, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path, *, scheduler: Any) -> TrainState:
    """Restore accelerate's state (model, optimizer, RNG) and the scheduler; return the train state.

    ``ValueError`` for a checkpoint that holds a pickle aki does not write or a file that is not plain tensors:
    it is refused, never unpickled.
    """
    path = Path(path)
    pickles = sorted(p.name for p in path.glob("*.pkl") if not _RNG_STATES.match(p.name))
    if pickles:
        raise ValueError(
            f"checkpoint {str(path)!r} holds {pickles}: pickles that aki does not write and will not load (they "
            "could run code); resume from a checkpoint this version of aki saved"
        )
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as error:  # weights_only=True refused an object that is not a tensor
        raise ValueError(
            f"checkpoint {str(path)!r} holds a file that is not plain tensors; refused to unpickle it: {error}"
        ) from None
    scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text()))
    return TrainState.from_json((path / STATE_FILE).read_text())


def saved_config(path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint was saved with (None for a checkpoint without one)."""
    file = Path(path) / CONFIG_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def claim_output_dir(path: Path, *, overwrite: bool) -> None:
    """Refuse an ``output_dir`` that holds anything (as Hugging Face's example scripts do) unless
    ``overwrite``, which deletes the files a run writes there (:data:`RUN_FILES`) and leaves the rest.
    """
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        entries = sorted(entry.name for entry in path.iterdir())
        raise FileExistsError(
            f"output_dir {str(path)!r} already exists and is not empty ({', '.join(entries[:6])}"
            f"{', ...' if len(entries) > 6 else ''}): resume that run (--resume), choose another output_dir, or "
            "replace it (--overwrite / overwrite_output_dir=true)"
        )
    for name in RUN_FILES:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _replace(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` stays (as ``.old``) until ``new`` is in place."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)  # also the copy a run killed between the two renames left


__all__ = [
    "RUN_FILES",
    "TrainState",
    "claim_output_dir",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "saved_config",
]
