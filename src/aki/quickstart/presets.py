"""Sizes of the quickstart study: the tiny AKI it builds and how much data and training it gets.

A :class:`Preset` is a plain frozen dataclass; :data:`PRESETS` holds ``smoke`` (seconds, for tests),
``default`` (the CPU run of ``aki quickstart``) and ``gpu`` (a larger model and more steps). The model is an
ordinary :class:`~aki.models.aki.AkiConfig`: a SigLIP vision tower, a Perceiver resampler and a Llama (or
Phi-3) language model, sized by :class:`ModelSize` and built by :func:`build_config`.

Example:
    >>> preset = get_preset("default", latents=8)
    >>> preset.model.num_latents
    8
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from ..data.synthetic import Family
from ..models.aki import AkiConfig, aki_config


@dataclass(frozen=True)
class ModelSize:
    """Widths and depths of the three parts; ``image_size / patch_size`` squared is the patch count."""

    image_size: int = 48
    patch_size: int = 6
    vision_width: int = 96
    vision_layers: int = 3
    vision_heads: int = 3
    resampler_depth: int = 2
    resampler_heads: int = 2
    resampler_head_dim: int = 32
    num_latents: int = 8
    language_model: Literal["llama", "phi3"] = "llama"
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_ffn: int = 384
    tie_embeddings: bool = False
    # Standard deviation of the language model's initial weights. Llama's 0.02 suits widths in the thousands;
    # at width 128 it leaves attention nearly uniform and slow to learn to look anything up (measured: the
    # fine-tuned model stayed at the answer priors; 0.08 learned attribute, comparison and counting questions).
    text_init_std: float = 0.08

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for width, heads, name in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if width % heads:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")


@dataclass(frozen=True)
class Preset:
    """One study's sizes: data, model, pre-training and fine-tuning steps, evaluation.

    ``train_samples`` questions (and their scenes' captions) are written to disk and visited in a seeded
    order; ``test_per_family`` test questions per family are answered by every model. The vision tower is
    first trained alone for ``vision_steps`` (:mod:`aki.quickstart.vision`), then frozen, as in the paper.
    """

    name: str
    model: ModelSize = field(default_factory=ModelSize)
    train_samples: int = 60000
    test_per_family: int = 200
    vision_steps: int = 1500
    vision_lr: float = 2e-3
    pretrain_steps: int = 600
    pretrain_lr: float = 2e-3
    # Fine-tuning takes smaller batches than the stages before it, in more steps: measured from one pre-trained
    # model, 3,600 steps of 16 questions reached 0.682 / 0.678 overall (causal / MMA) where 1,800 of 32 reached
    # 0.655 / 0.643, in about the same time (the CPU's cost is per token).
    sft_steps: int = 4000
    sft_batch_size: int = 16
    # Measured from one pre-trained model: at 1e-3 the spatial curriculum stayed at chance (loss flat at 0.35
    # for 400 steps) and existence and counting fell to chance with it; at 3e-4 and 5e-4 spatial reached 0.895
    # and 0.905. 1e-3 had worked in an earlier session on another machine: it sits on an edge that rounding
    # differences push either way.
    sft_lr: float = 5e-4
    # Fine-tuning begins with a curriculum: its first ``curriculum_steps`` (of ``sft_steps``) see only the
    # questions of ``curriculum_families``, then every family. Both arms get the same curriculum. Measured on
    # the default size (causal, one pre-trained model): learned first, spatial questions end at 0.885 to 0.905
    # on the test split, in the six-family mix from the start at 0.715 to 0.855 (lr 3e-4); and multiple-choice
    # relations ("where is the A relative to the B?") follow them, 0.89 with the curriculum, 0.63 without.
    curriculum_families: tuple[str, ...] = ("spatial",)
    curriculum_steps: int = 800
    # Weight of each family's questions in the fine-tuning mix after the curriculum (families not listed:
    # 1). Multiple choice needs the model to learn to copy an option's letter from the prompt; measured from
    # one pre-trained model at lr 3e-4 without the curriculum (option markers then three tokens, "( B )"), its
    # relation questions reached 0.63 at weight 3 and 0.32 at weight 1; weight 6 did no better than 3.
    family_weights: tuple[tuple[str, float], ...] = (("multiple_choice", 3.0),)
    batch_size: int = 32  # the vision tower's and pre-training's (fine-tuning: ``sft_batch_size``)
    warmup_steps: int = 20
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        positive = {
            "train_samples": self.train_samples,
            "test_per_family": self.test_per_family,
            "vision_steps": self.vision_steps,
            "pretrain_steps": self.pretrain_steps,
            "sft_steps": self.sft_steps,
            "batch_size": self.batch_size,
            "sft_batch_size": self.sft_batch_size,
            "eval_batch_size": self.eval_batch_size,
        }
        bad = {key: value for key, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"preset {self.name!r}: these sizes must be >= 1: {bad}")
        if not 0 <= self.curriculum_steps < self.sft_steps:
            raise ValueError(
                f"preset {self.name!r}: curriculum_steps must be in [0, sft_steps={self.sft_steps}), "
                f"got {self.curriculum_steps}"
            )
        families = [family.value for family in Family]
        unknown = sorted(set(self.curriculum_families) - set(families))
        if unknown or (self.curriculum_steps and not self.curriculum_families):
            raise ValueError(
                f"preset {self.name!r}: curriculum_families must name question families of "
                f"{families}, got {list(self.curriculum_families)}"
            )
        weights = dict(self.family_weights)
        if set(weights) - set(families) or any(not weight > 0 for weight in weights.values()):
            raise ValueError(
                f"preset {self.name!r}: family_weights must give question families of {families} "
                f"weights > 0, got {weights}"
            )

    def family_weight(self, family: str) -> float:
        """The weight of ``family``'s questions in the fine-tuning mix (1 unless ``family_weights`` names it)."""
        return dict(self.family_weights).get(family, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        model=ModelSize(
            image_size=32,
            patch_size=8,
            vision_width=32,
            vision_heads=2,
            vision_layers=1,
            resampler_depth=1,
            resampler_head_dim=16,
            num_latents=4,
            text_width=32,
            text_layers=1,
            text_heads=2,
            text_ffn=64,
        ),
        train_samples=48,
        test_per_family=2,
        vision_steps=2,
        pretrain_steps=2,
        sft_steps=3,
        curriculum_steps=1,
        batch_size=4,
        sft_batch_size=4,
        warmup_steps=0,
        eval_batch_size=12,
    ),
    "default": Preset(name="default"),
    "gpu": Preset(
        name="gpu",
        model=ModelSize(
            image_size=64,
            patch_size=8,
            vision_width=192,
            vision_layers=4,
            vision_heads=4,
            resampler_depth=2,
            resampler_heads=4,
            resampler_head_dim=48,
            num_latents=16,
            text_width=384,
            text_layers=6,
            text_heads=6,
            text_ffn=1024,
            text_init_std=0.05,
        ),
        train_samples=60000,
        test_per_family=500,
        pretrain_steps=1500,
        pretrain_lr=1e-3,
        sft_steps=3000,
        sft_lr=5e-4,
        curriculum_steps=500,
        batch_size=64,
        sft_batch_size=64,
        warmup_steps=100,
        eval_batch_size=256,
    ),
}


def get_preset(name: str, *, latents: int | None = None) -> Preset:
    """The preset called ``name``, with ``num_latents`` replaced when ``latents`` is given."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    if latents is None:
        return preset
    if latents < 1:
        raise ValueError(f"latents must be >= 1, got {latents}")
    return dataclasses.replace(preset, model=dataclasses.replace(preset.model, num_latents=latents))


def build_config(tokenizer: PreTrainedTokenizerBase, size: ModelSize) -> AkiConfig:
    """An :class:`AkiConfig` of ``size`` whose vocabulary and special ids come from ``tokenizer``."""
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": size.vision_width,
        "intermediate_size": 2 * size.vision_width,
        "num_hidden_layers": size.vision_layers,
        "num_attention_heads": size.vision_heads,
        "image_size": size.image_size,
        "patch_size": size.patch_size,
        "vision_use_head": False,
    }
    text = {
        "model_type": size.language_model,
        "hidden_size": size.text_width,
        "intermediate_size": size.text_ffn,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": size.tie_embeddings,
        "initializer_range": size.text_init_std,
    }
    resampler = {
        "resampler_depth": size.resampler_depth,
        "resampler_heads": size.resampler_heads,
        "resampler_head_dim": size.resampler_head_dim,
        "resampler_ff_mult": 2,
    }
    return aki_config(
        vision=vision, text=text, resampler=resampler, num_latents=size.num_latents, tokenizer=tokenizer
    )


__all__ = ["PRESETS", "ModelSize", "Preset", "build_config", "get_preset"]
