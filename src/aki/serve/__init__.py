"""Serving AKI: a batching generation engine and three front ends on it (terminal chat, gradio demo, an
OpenAI-compatible HTTP server). Only :mod:`aki.serve.engine` is imported here; the front ends import their
own dependencies (rich, gradio, fastapi) when used.
"""

from ..generation import Completion, InputError, SamplingParams, load_model
from .engine import Engine, Generation, Limits

__all__ = ["Completion", "Engine", "Generation", "InputError", "Limits", "SamplingParams", "load_model"]
