"""Training configs: dataclasses filled from YAML, with ``dotted.key=value`` overrides from the command line.

A run's config is its stage's packaged default (``configs/vision.yaml``, ``configs/pretrain.yaml`` or
``configs/sft.yaml``), then the
user's YAML file over it (which may itself update a ``base:`` file), then the overrides over that. Unknown keys and values of the wrong type raise a
``ValueError`` naming the key.

Example:
    >>> config = load_config("sft", overrides=["optim.lr=3e-5", "model.attention=causal"])
    >>> config.optim.lr, config.model.attention
    (3e-05, 'causal')
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data.config import DataConfig, SourceConfig

CONFIG_DIR = Path(__file__).parent / "configs"
Stage = Literal["vision", "pretrain", "sft"]


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (peft); the LM's own weights are then frozen."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """Which model to train and what of it.

    * ``init``: a ``save_pretrained`` directory (model + processor) to start from, e.g. the pre-training
      output for SFT; None builds a fresh model with ``builder`` (a function of ``aki.models.aki.builders``)
      called with the tokenizer and ``builder_args``.
    * ``tokenizer``: a tokenizer directory, or ``synthetic`` for the word-level tokenizer of the synthetic
      scenes; None takes the processor saved in ``init``.
    * ``system_message``: the chat template's default system turn for a new processor (None: AKI's released
      one; the tiny default uses "" to keep samples short); a processor loaded from ``init`` keeps its own.
    * ``attention``: ``mma`` or ``causal`` (pre-training is causal either way: captions are RESPONSE).
    * ``train_*``: the freeze policy (the paper: vision tower frozen, resampler and LM trained).
    * ``extend_vocabulary``: add the words of the training data that a word-level tokenizer does not know to it,
      growing the embeddings and the head (:mod:`aki.train.vocabulary`); without it such answers are skipped.
    * ``allow_untrained_vision_tower``: train with a frozen vision tower that was never trained (a fresh model,
      or one whose training record shows no vision stage); refused otherwise (:mod:`aki.train.lineage`).
    """

    init: str | None = None
    builder: str = "aki_tiny"
    builder_args: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    system_message: str | None = None
    attention: Literal["mma", "causal"] = "mma"
    attn_implementation: str = "sdpa"
    train_vision_tower: bool = False
    train_resampler: bool = True
    train_language_model: bool = True
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    extend_vocabulary: bool = False
    allow_untrained_vision_tower: bool = False

    def __post_init__(self) -> None:
        if self.extend_vocabulary and (self.lora is not None or not self.train_language_model):
            raise ValueError(
                "model.extend_vocabulary trains the new rows of the embeddings and the head: it needs "
                "model.train_language_model=true and no model.lora"
            )


@dataclass
class OptimConfig:
    """AdamW (no decay on biases, norms and other 1-D tensors), linear warmup then cosine to ``min_lr_ratio``."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0


@dataclass
class CheckpointConfig:
    """``every`` steps (0: only at the end and when a run stops on an error), keeping the last ``keep``.

    ``resume``: ``auto`` (the latest checkpoint in ``output_dir``, if any), a checkpoint directory, or None.
    """

    every: int = 0
    keep: int = 2
    resume: str | None = None


@dataclass
class LoggingConfig:
    """Progress bar, tensorboard scalars every ``every`` steps, and optionally the ids of every step's samples."""

    every: int = 1
    progress_bar: bool = True
    tensorboard: bool = True
    record_samples: bool = False


@dataclass
class TrainConfig:
    """A whole run: ``steps`` optimizer steps of ``batch_size`` samples per rank x ``gradient_accumulation_steps``.

    ``mixed_precision``: ``auto`` is what ``accelerate launch`` was given, else bf16 on a GPU that supports it
    and fp32 elsewhere. ``ddp_find_unused_parameters`` is needed under DDP when some batches have no image.
    ``output_dir`` must be empty or new unless the run resumes (``checkpoint.resume``) or
    ``overwrite_output_dir`` is set, which deletes the earlier run's files there first.
    """

    stage: Stage = "sft"
    output_dir: str = "runs/aki"
    overwrite_output_dir: bool = False
    seed: int = 0
    steps: int = 100
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    ddp_find_unused_parameters: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "data.max_length": self.data.max_length,
            "logging.every": self.logging.every,
        }
        bad = {key: value for key, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1: {bad}")
        if not self.data.sources:
            raise ValueError("data.sources is empty: give at least one data source")
        if not 0.0 <= self.data.flip_probability <= 1.0:
            raise ValueError(f"data.flip_probability must be in [0, 1], got {self.data.flip_probability}")
        problems = [f"{key} must be {rule}, got {value!r}" for key, value, rule in _out_of_range(self)]
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self, *, applicable_only: bool = False) -> dict[str, Any]:
        """Every setting as nested dicts; ``applicable_only`` keeps of each data source only the fields its
        format reads (``--print-config``).
        """
        data = dataclasses.asdict(self)
        if applicable_only:
            data["data"]["sources"] = [source.applicable() for source in self.data.sources]
        return data


def _out_of_range(config: TrainConfig) -> list[tuple[str, Any, str]]:
    """``(key, value, rule)`` of every setting outside the range where training means anything."""
    optim, checkpoint, data = config.optim, config.checkpoint, config.data
    checks = [
        ("seed", config.seed, "an integer in [0, 2**32 - 1]", 0 <= config.seed < 2**32),
        ("optim.lr", optim.lr, "a finite number >= 0", _finite(optim.lr) and optim.lr >= 0),
        (
            "optim.weight_decay",
            optim.weight_decay,
            "a finite number >= 0",
            _finite(optim.weight_decay) and optim.weight_decay >= 0,
        ),
        ("optim.eps", optim.eps, "a finite number > 0", _finite(optim.eps) and optim.eps > 0),
        (
            "optim.betas",
            optim.betas,
            "two numbers in [0, 1)",
            len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
        ),
        ("optim.warmup_steps", optim.warmup_steps, ">= 0", optim.warmup_steps >= 0),
        ("optim.min_lr_ratio", optim.min_lr_ratio, "in [0, 1]", 0 <= optim.min_lr_ratio <= 1),
        (
            "optim.max_grad_norm",
            optim.max_grad_norm,
            "null (no clipping) or a finite number > 0",
            optim.max_grad_norm is None or (_finite(optim.max_grad_norm) and optim.max_grad_norm > 0),
        ),
        ("checkpoint.every", checkpoint.every, ">= 0 (0: only at the end)", checkpoint.every >= 0),
        ("checkpoint.keep", checkpoint.keep, ">= 1", checkpoint.keep >= 1),
        ("data.num_workers", data.num_workers, ">= 0", data.num_workers >= 0),
        ("data.max_image_pixels", data.max_image_pixels, ">= 1", data.max_image_pixels >= 1),
    ]
    for index, source in enumerate(data.sources):
        where = f"data.sources[{index}]"
        checks += [
            (
                f"{where}.weight",
                source.weight,
                "a finite number >= 0",
                _finite(source.weight) and source.weight >= 0,
            ),
            (f"{where}.size", source.size, ">= 1", source.size >= 1),
            (f"{where}.image_size", source.image_size, ">= 1", source.image_size >= 1),
        ]
    lora = config.model.lora
    if lora is not None:
        checks += [
            ("model.lora.r", lora.r, ">= 1", lora.r >= 1),
            ("model.lora.alpha", lora.alpha, "> 0", lora.alpha > 0),
            ("model.lora.dropout", lora.dropout, "in [0, 1)", 0 <= lora.dropout < 1),
        ]
    return [(key, value, rule) for key, value, rule, ok in checks if not ok]


def _finite(value: float) -> bool:
    return math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(stage: Stage, path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The stage's default config, updated by the YAML file at ``path`` and then by ``key=value`` overrides.

    Override values are parsed as YAML (``optim.lr=1e-4``, ``model.lora={r: 8}``, ``data.sources=[...]``).
    """
    if stage not in typing.get_args(Stage):
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(typing.get_args(Stage))}")
    data = _read_yaml(CONFIG_DIR / f"{stage}.yaml")
    if path is not None:
        path = Path(path)
        if not path.is_file() and (CONFIG_DIR / path).is_file():
            path = CONFIG_DIR / path  # a packaged config, e.g. paper/sft_4b.yaml
        data = _merge(data, _read_yaml(path))
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"override {override!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        data = _merge(data, _nest(key.strip(), yaml.safe_load(value)))
    if data.get("stage", stage) != stage:
        raise ValueError(f"the config is for stage {data['stage']!r}, not {stage!r}")
    data["stage"] = stage
    return from_dict(TrainConfig, data)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking keys and value types (``where`` names the key)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where.rstrip('.') or 'config'}; known: {sorted(names)}"
        )
    return cls(**{key: _convert(hints[key], value, f"{where}{key}") for key, value in data.items()})


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {options}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{where}.")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is Any:
        if origin is dict and not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return value
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a float, got {value!r}") from None
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ValueError(f"{where} must be a {hint.__name__}, got {value!r}")
    return value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a ``base:`` key names a file (relative to this one) that it updates."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"config files include each other in a loop: {[str(p) for p in seen]}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``; mappings merge key by key, everything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    for key in reversed(dotted.split(".")[1:]):
        value = {key: value}
    return {dotted.split(".")[0]: value}


__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "SourceConfig",
    "TrainConfig",
    "load_config",
]
