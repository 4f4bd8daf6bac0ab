"""Strict loading of saved models: every tensor of the checkpoint must be one the model has, of its shape.

``from_pretrained`` fills a missing tensor with a fresh random initialisation and drops an unexpected one, with
only a log line; a model served or trained on from such a directory would answer with random weights. aki's
loaders (serving, chat, the demo, evaluation, ``model.init`` of training) refuse it instead, naming the keys, as
``safetensors``' own strict loading does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_pretrained"]


def load_pretrained(model_class: Any, path: str | Path, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(path, **kwargs)``; ``ValueError`` naming the tensors when the checkpoint has
    missing, unexpected or mis-shaped ones.
    """
    model, info = model_class.from_pretrained(
        path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    problems = {
        "missing (they would be initialised at random)": sorted(info.get("missing_keys", ())),
        "not in the model": sorted(info.get("unexpected_keys", ())),
        "of another shape than the config gives": sorted(
            str(key[0]) if isinstance(key, tuple) else str(key) for key in info.get("mismatched_keys", ())
        ),
        "unreadable": [str(message) for message in info.get("error_msgs", ())],
    }
    found = [f"{what}: {_listed(keys)}" for what, keys in problems.items() if keys]
    if found:
        raise ValueError(
            f"{str(path)!r} does not hold the model its config describes; tensors " + "; ".join(found)
        )
    return model


def _listed(keys: list[str], shown: int = 8) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
