"""Checkpoints written atomically: accelerate's state (safetensors weights, optimizer, scheduler, RNG of every
rank) plus ``trainer_state.json`` (step, loss history, data position), saved into ``step_XXXXXXXX.tmp`` and
renamed to ``step_XXXXXXXX`` only when complete. A run killed while saving leaves a ``.tmp`` folder that is
never resumed from and is removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


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
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file())


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None, ``auto`` (the latest complete one, if any) or a directory."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete checkpoint (no {STATE_FILE} in it)")
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | Path, state: TrainState, *, keep: int
) -> Path:
    """Save accelerate's state and ``state`` as ``checkpoints/step_XXXXXXXX``; keep the newest ``keep``.

    Every rank must call it (the model and optimizer may be sharded).
    """
    final = checkpoint_root(output_dir) / f"step_{state.step:08d}"
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(state.to_json())
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[: -max(keep, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> TrainState:
    """Restore accelerate's state (model, optimizer, registered scheduler, RNG) and return the train state."""
    accelerator.load_state(str(path))
    return TrainState.from_json((Path(path) / STATE_FILE).read_text())


__all__ = [
    "TrainState",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
]
