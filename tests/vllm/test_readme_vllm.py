"""The README's vLLM block runs, on the tiny AKI, and answers as aki's own generate does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from vllm_helpers import VLLM_MISSING, noise

from aki.serve.loadtest import data_url

pytest.importorskip("vllm.entrypoints.llm", reason=VLLM_MISSING)

import torch
from transformers import AutoProcessor

from aki.models import AkiForConditionalGeneration

pytestmark = pytest.mark.vllm

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block() -> str:
    section = README.read_text().split("## Serving on vLLM", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_block_answers_as_akis_generate(engines, aki_dir):
    engines.close()
    namespace = {"model_dir": str(aki_dir), "image_url": data_url(noise(7))}
    exec(compile(readme_block(), str(README), "exec"), namespace)
    processor = AutoProcessor.from_pretrained(aki_dir)
    model = AkiForConditionalGeneration.from_pretrained(aki_dir).eval()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    batch = processor(images=[noise(7)], text=processor.apply_chat_template(chat, add_generation_prompt=True))
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=16, do_sample=False)[0, batch["input_ids"].shape[1] :]
    assert namespace["answer"] == processor.tokenizer.decode(tokens, skip_special_tokens=True)
    del namespace["llm"]
