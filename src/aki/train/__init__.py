"""Training recipes of AKI, driven by YAML configs: the vision stage, pre-training and fine-tuning (accelerate)."""

from .config import TrainConfig, load_config
from .recipe import DataError, TrainResult, run, run_pretrain, run_sft
from .vision import run_vision

__all__ = [
    "DataError",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "run",
    "run_pretrain",
    "run_sft",
    "run_vision",
]
