"""The embedded default: a tiny AKI trained on synthetic scenes, MMA against causal attention, in minutes.

:func:`~aki.quickstart.study.run_study` runs the whole study over the packaged stage configs of a preset
(:mod:`aki.quickstart.presets`); ``aki quickstart`` is its command line. The study needs the ``train`` extra,
so it is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "StudyOptions", "get_preset", "run_study"]


def __getattr__(name: str) -> Any:
    if name in ("StudyOptions", "run_study"):
        return getattr(importlib.import_module(".study", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
