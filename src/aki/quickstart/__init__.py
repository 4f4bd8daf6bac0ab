"""The embedded default: a tiny AKI trained on synthetic scenes, MMA against causal attention, in minutes.

:func:`~aki.quickstart.study.run_study` runs the whole study over the packaged stage configs of a preset
(:mod:`aki.quickstart.presets`); ``aki quickstart`` is its command line.
"""

from .presets import PRESETS, Preset, get_preset
from .study import StudyOptions, run_study

__all__ = ["PRESETS", "Preset", "StudyOptions", "get_preset", "run_study"]
