"""Shared pieces of the AKI model tests: a tiny tokenizer, a tiny model and its processor, test images."""

from __future__ import annotations

import pytest
import torch

from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

TEST_TEXTS = [
    "What is this? It is a cat. What color? It is red. Describe the image. A blue cat sits on a mat. A chat.",
]


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer(TEST_TEXTS)


@pytest.fixture
def config(tokenizer):
    return aki_tiny(tokenizer)


@pytest.fixture
def model(config):
    torch.manual_seed(0)
    return AkiForConditionalGeneration(config).eval()


@pytest.fixture
def processor(config, tokenizer):
    return AkiProcessor.for_model(config, tokenizer)
