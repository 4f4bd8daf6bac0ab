"""Training recipes of AKI, driven by YAML configs: the vision stage, pre-training and fine-tuning (accelerate).

The recipes need the ``train`` extra (``pip install aki[train]``); their configs (:mod:`aki.train.config`) do
not, so they are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainConfig, load_config

_LAZY = {
    "DataError": "recipe",
    "TrainResult": "recipe",
    "run": "recipe",
    "run_pretrain": "recipe",
    "run_sft": "recipe",
    "run_vision": "vision",
}

__all__ = ["TrainConfig", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
