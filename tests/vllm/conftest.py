"""Shared pieces of the vLLM tests: tiny saved models and one in-process vLLM engine at a time.

The engine runs in the test process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with a 1 GiB KV cache
(``VLLM_CPU_KVCACHE_SPACE``: without it vLLM reserves most of the machine's memory). Engines are slow to
start (seconds each), so tests that share a configuration share its engine: :class:`Engines` keeps the last
one open and closes it only when a test asks for another.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from tiny_models import save_tiny_aki, save_tiny_llava

# What every engine of these tests runs with: fp32 (so vLLM and transformers agree to 1e-5), room for 512 tokens.
ENGINE_DEFAULTS = {"dtype": "float32", "max_model_len": 512, "max_num_seqs": 8, "seed": 0}


class Engines:
    """One vLLM ``LLM`` at a time, reused while tests ask for the same model and options."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.llm: Any = None

    def get(self, model: Path, **options: Any):
        from vllm import LLM

        key = (str(model), repr(sorted(options.items())))
        if key != self.key:
            self.close()
            self.llm = LLM(model=str(model), **{**ENGINE_DEFAULTS, **options})
            self.key = key
        return self.llm

    def close(self) -> None:
        if self.llm is None:
            return
        from vllm.distributed import cleanup_dist_env_and_memory

        self.llm, self.key = None, None
        gc.collect()
        cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    engines = Engines()
    yield engines
    engines.close()


@pytest.fixture(scope="session")
def aki_dir(tmp_path_factory) -> Path:
    return save_tiny_aki(tmp_path_factory.mktemp("tiny-aki"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))
