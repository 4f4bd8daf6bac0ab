"""The model side of a recipe: tokenizer, processor and AKI model from a :class:`ModelConfig`, with the
attention mode, freeze policy and optional LoRA applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoTokenizer

from ..data import synthetic
from ..models import load_pretrained
from ..models.aki import AkiForConditionalGeneration, AkiProcessor, builders, chat_template
from .config import LoraConfig, ModelConfig

TOKENIZERS = {"synthetic": synthetic.tokenizer}  # the word-level tokenizer of the synthetic scenes


def load_tokenizer(name: str) -> Any:
    """A tokenizer directory, or a name of :data:`TOKENIZERS` (``synthetic``)."""
    if name in TOKENIZERS:
        return TOKENIZERS[name]()
    if Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    raise ValueError(f"model.tokenizer {name!r} is neither a directory nor one of {sorted(TOKENIZERS)}")


def build_model(config: ModelConfig) -> tuple[nn.Module, AkiForConditionalGeneration, AkiProcessor]:
    """``(trainable, model, processor)``: ``model`` is the AKI model, ``trainable`` the module to optimise
    (the model itself, or its peft wrapper with LoRA). Call it after seeding: a fresh model's weights are random.

    From ``init``, the processor saved there is used unless ``tokenizer`` names another; a fresh model is
    built by ``builder`` around ``tokenizer`` (which is then required).
    """
    if config.init is not None:
        if not (Path(config.init) / "config.json").is_file():
            raise FileNotFoundError(
                f"model.init {config.init!r} is not a saved model directory (no config.json): train the stage "
                "before it first (aki train vision, then pretrain, then sft), or set model.init to one"
            )
        model = load_pretrained(AkiForConditionalGeneration, config.init)
        if config.tokenizer is None:
            processor = AkiProcessor.from_pretrained(config.init)
        else:
            processor = _processor(model.config, load_tokenizer(config.tokenizer), config.system_message)
    else:
        if config.tokenizer is None:
            raise ValueError("model.tokenizer is needed to build a fresh model (model.init is None)")
        if not config.builder.startswith("aki_") or not hasattr(builders, config.builder):
            raise ValueError(f"unknown model.builder {config.builder!r}; use one of {builders.__all__}")
        tokenizer = load_tokenizer(config.tokenizer)
        model_config = getattr(builders, config.builder)(tokenizer, **config.builder_args)
        processor = _processor(model_config, tokenizer, config.system_message)
        model = AkiForConditionalGeneration(model_config)
    rows = model.get_input_embeddings().num_embeddings
    if len(processor.tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(processor.tokenizer)} tokens but the model's embeddings have {rows} rows: "
            "ids past them have no embedding. To add the words of your data, keep the saved tokenizer and set "
            "model.extend_vocabulary=true (the embeddings and the head grow with it)"
        )
    if processor.num_image_tokens != model.config.num_latents:
        raise ValueError(
            f"the processor expands <image> to {processor.num_image_tokens} tokens but the model has "
            f"{model.config.num_latents} latents"
        )
    model.set_attn_implementation(config.attn_implementation)
    model.set_mma(config.attention == "mma")
    model.set_trainable(
        vision_tower=config.train_vision_tower,
        resampler=config.train_resampler,
        language_model=config.train_language_model and config.lora is None,
    )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = model if config.lora is None else add_lora(model, config.lora)
    return trainable, model, processor


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Without ``enabled``, transformers' own progress bars (loading weights, writing shards) are off for the
    duration; with it, they are left as they are.
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()


def _processor(model_config: Any, tokenizer: Any, system_message: str | None) -> AkiProcessor:
    template = None if system_message is None else chat_template(system_message)
    return AkiProcessor.for_model(model_config, tokenizer, chat_template=template)


def add_lora(model: AkiForConditionalGeneration, config: LoraConfig) -> nn.Module:
    """LoRA adapters on ``config.target_modules`` of the language model only (peft); other trainable parts
    (the resampler) stay trainable. ``merge_and_unload()`` of the result gives a plain AKI model back.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    targets = "|".join(config.target_modules)
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=rf"language_model\..*\.({targets})",
    )
    wrapped = get_peft_model(model, peft_config)
    for name, parameter in model.named_parameters():  # peft froze everything but the adapters
        if name in trainable:
            parameter.requires_grad_(True)
    return wrapped


__all__ = ["TOKENIZERS", "add_lora", "build_model", "library_progress_bars", "load_tokenizer"]
