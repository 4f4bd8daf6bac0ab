"""AkiConfig and the size builders: the released architecture by the numbers, validation, Auto loading."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

import aki.models  # noqa: F401  (registers the Auto classes)
from aki.models import AkiConfig, AkiForConditionalGeneration, aki_4b, aki_tiny


def test_aki_4b_is_the_released_architecture():
    config = aki_4b()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (
        1152,
        27,
        384,
        14,
    )
    assert (vision.image_size // vision.patch_size) ** 2 == 729
    assert (config.resampler_depth, config.resampler_heads, config.resampler_head_dim) == (6, 8, 64)
    assert (config.resampler_ff_mult, config.num_latents, config.text_head_bias) == (4, 144, True)
    assert (text.model_type, text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (
        "phi3",
        3072,
        32,
        8192,
    )
    assert text.rope_parameters["rope_type"] == "longrope" and len(text.rope_parameters["long_factor"]) == 48


def test_aki_4b_parameter_counts_by_hand():
    with torch.device("meta"):
        model = AkiForConditionalGeneration(aki_4b())
    count = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("resampler", "language_model")
    }
    d, inner, width = 1152, 8 * 64, 3072
    layer = 2 * 2 * d + d * inner + d * 2 * inner + inner * d + 2 * d + 2 * d * 4 * d
    assert count["resampler"] == 6 * layer + 144 * d + 2 * d + d * width + width == 81_608_448
    vocab, hidden, mlp = 32064, 3072, 8192
    block = hidden * 3 * hidden + hidden * hidden + hidden * 2 * mlp + mlp * hidden + 2 * hidden
    head = vocab * hidden + vocab  # with the bias of the released head
    assert count["language_model"] == vocab * hidden + 32 * block + hidden + head == 3_821_111_616


def test_builders_take_sizes_and_ids_from_the_tokenizer(tokenizer):
    config = aki_tiny(tokenizer)
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.media_token_id == tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    assert config.text_config.pad_token_id == tokenizer.pad_token_id
    assert config.text_config.eos_token_id == tokenizer.eos_token_id
    assert aki_4b(tokenizer).text_config.vocab_size == len(tokenizer)


def test_invalid_sizes_and_ids_are_refused():
    with pytest.raises(ValueError, match=r"sizes must be >= 1, got \{'num_latents': 0\}"):
        aki_tiny(num_latents=0)
    with pytest.raises(ValueError, match=r"media_token_id=64 is outside the text vocabulary of 64 tokens"):
        aki_tiny(media_token_id=64)


def test_config_round_trips_through_auto_config(tmp_path):
    config = aki_tiny(text_head_bias=True, use_mma=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, AkiConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.text_head_bias and not loaded.use_mma
