"""Fixtures of the training tests: one thread per test, synthetic data files, a tiny processor."""

from __future__ import annotations

import pytest
import torch

from aki.data import synthetic
from aki.models import AkiProcessor, aki_tiny, tiny_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared by everything; one thread per test process keeps timings and results stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def processor() -> AkiProcessor:
    tokenizer = tiny_tokenizer(synthetic.vocabulary())  # whitespace tokens: prompts read token by token
    return AkiProcessor.for_model(aki_tiny(tokenizer), tokenizer)


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory) -> synthetic.SplitFiles:
    """12 synthetic samples on disk: PNGs, a LLaVA JSONL and a caption JSONL."""
    return synthetic.write_split(tmp_path_factory.mktemp("synthetic"), "train", 12, image_size=32)
