"""Tiny random AKI and LLaVA models saved to a directory, built from configs (nothing is downloaded).

vLLM's CPU attention takes head sizes 32, 64, 80, ... (not 16), so the language models have heads of 32.
Weights are drawn wider than Llama's default (std ``TEXT_STD``) so that greedy answers vary from prompt to
prompt and the media rows' extra attention moves them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

TEXT_STD = 0.25
WORDS = (
    "What is this? What color is it? Describe the image. Which shape is on the left? It is a red cat on a "
    "blue mat. How many are there? USER: ASSISTANT:"
)
TINY_TEXT = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "initializer_range": TEXT_STD,
}


def tokenizer():
    return tiny_tokenizer([WORDS])


def save_tiny_aki(directory: Path, *, seed: int = 0) -> Path:
    """A tiny AKI (SigLIP 32 px, 4 latents, Llama 4 x 128 with heads of 32) and its processor in ``directory``."""
    tok = tokenizer()
    config = aki_tiny(tok, text_config=TINY_TEXT)
    torch.manual_seed(seed)
    model = AkiForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    AkiProcessor.for_model(config, tok).save_pretrained(directory)
    return directory
