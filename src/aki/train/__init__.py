"""Training recipes of AKI (pre-training and fine-tuning) on accelerate, driven by YAML configs."""

from .config import TrainConfig, load_config
from .recipe import DataError, TrainResult, run, run_pretrain, run_sft

__all__ = ["DataError", "TrainConfig", "TrainResult", "load_config", "run", "run_pretrain", "run_sft"]
