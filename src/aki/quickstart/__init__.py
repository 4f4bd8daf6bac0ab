"""The embedded default: a tiny AKI trained on synthetic scenes, MMA against causal attention, in minutes.

:func:`~aki.quickstart.study.run_study` runs the whole study; ``aki quickstart`` is its command line.
"""

from .presets import PRESETS, ModelSize, Preset, build_config, get_preset
from .study import StudyOptions, run_study

__all__ = [
    "PRESETS",
    "ModelSize",
    "Preset",
    "StudyOptions",
    "build_config",
    "get_preset",
    "run_study",
]
