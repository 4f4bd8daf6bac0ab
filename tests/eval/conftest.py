"""Fixtures of the evaluation tests: two tiny saved AKI models (helpers live in ``eval_helpers``).

``random_aki`` is a seeded random ``aki_tiny``. ``yes_aki`` is the same model with a rigged output head
(zero weights, a bias of ln(V - 1) on "Yes" and 0 elsewhere, V the vocabulary size), so at every position
p("Yes") = 1/2 and every other token has p = 1 / (2 (V - 1)), whatever the input: greedy answers are "Yes"
and log-likelihoods can be computed by hand.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from aki.eval.benchmarks import CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEXTS = [
    CHOICE_INSTRUCTION,
    SHORT_ANSWER_INSTRUCTION,
    "Is there a cat in the image? Is there a dog? What color is the cat? Yes No Maybe red blue",
    "How many cats are there? Options: Context: Round",
]


class SavedAki(NamedTuple):
    """A saved tiny AKI directory and the numbers its tests compute with."""

    path: Path
    vocab_size: int


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer(TEXTS)


def _save(model: AkiForConditionalGeneration, tokenizer, path: Path) -> SavedAki:
    model.save_pretrained(path)
    AkiProcessor.for_model(model.config, tokenizer).save_pretrained(path)
    return SavedAki(path, len(tokenizer))


@pytest.fixture(scope="session")
def random_aki(tmp_path_factory, tokenizer) -> SavedAki:
    torch.manual_seed(0)
    # A larger init than Llama's 0.02: the image's effect on later tokens (what MMA changes) is then well above
    # float noise, so a test can tell MMA from causal by a log-likelihood.
    config = aki_tiny(tokenizer, text_init_std=0.2)
    model = AkiForConditionalGeneration(config).eval()
    return _save(model, tokenizer, tmp_path_factory.mktemp("random_aki"))


@pytest.fixture(scope="session")
def yes_aki(tmp_path_factory, tokenizer) -> SavedAki:
    torch.manual_seed(0)
    model = AkiForConditionalGeneration(aki_tiny(tokenizer, text_head_bias=True)).eval()
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("Yes")] = math.log(len(tokenizer) - 1)
    return _save(model, tokenizer, tmp_path_factory.mktemp("yes_aki"))
