"""Requests and answers of the vLLM tests: images, chats, and greedy answers from vLLM and from transformers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# Checked as `vllm.entrypoints.llm`: in a venv without vLLM, this directory itself imports as a namespace `vllm`.
VLLM_MISSING = "vLLM is not installed: the vLLM tests run in the venv of .ci/vllm-env.sh"
NEW_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4  # fp32, vLLM's CPU kernels against transformers' SDPA


def noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def user(*items: str | Image.Image) -> dict:
    """A user message; an image item stands for one ``<image>``."""
    content = [
        {"type": "text", "text": item} if isinstance(item, str) else {"type": "image", "image": item}
        for item in items
    ]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def images_of(chat: list[dict]) -> list[Image.Image]:
    return [
        item["image"] for m in chat for item in m["content"] if isinstance(item, dict) and "image" in item
    ]


# Different images and questions, two images in one prompt, an image in an earlier turn, and no image at all.
CHATS = [
    [user(noise(1), "What is this?")],
    [user(noise(2), "What color is it? Describe the image.")],
    [user(noise(3), noise(4), "Which shape is on the left?")],
    [user(noise(5), "What is this?"), assistant("It is a red cat."), user("How many are there?")],
    [user("What is this?"), assistant("It is a cat."), user(noise(6), "What color is it?")],
    [user("Describe the image.")],
]
IMAGE_CHATS = [i for i, chat in enumerate(CHATS) if images_of(chat)]


@dataclass
class Answer:
    """Greedy tokens of one request (through the end-of-sequence token) and its first step's log-probs."""

    tokens: list[int]
    first_logprobs: torch.Tensor  # (vocab,)


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def vllm_answers(
    llm, prompts: list[str], chats: list[list[dict]], *, new_tokens: int = NEW_TOKENS, **sampling
):
    """vLLM's greedy answers, all requests in one ``generate`` (one ragged batch); log-probs of the top 5."""
    from vllm import SamplingParams

    requests = []
    for prompt, chat in zip(prompts, chats, strict=True):
        images = images_of(chat)
        requests.append({"prompt": prompt, **({"multi_modal_data": {"image": images}} if images else {})})
    params = SamplingParams(max_tokens=new_tokens, temperature=0, logprobs=5, **sampling)
    return llm.generate(requests, params, use_tqdm=False)


def first_step_gap(output, reference: Answer) -> float:
    """Largest difference between vLLM's top log-probs of the first step and the reference's."""
    first = output.outputs[0].logprobs[0]
    return max(abs(entry.logprob - reference.first_logprobs[token].item()) for token, entry in first.items())


def hf_answers(
    model, batch, *, eos: int, suppress: int | None = None, new_tokens: int = NEW_TOKENS, **kwargs
):
    """transformers' greedy answers of a (left-padded) batch: tokens until EOS and first-step log-probs."""
    out = model.generate(
        **batch,
        max_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    first = out.logits[0].float()
    if suppress is not None:
        first[:, suppress] = float("-inf")  # AKI never answers with its image placeholder
    prompt_length = batch["input_ids"].shape[1]
    return [
        Answer(until_eos(out.sequences[row, prompt_length:].tolist(), eos), torch.log_softmax(first[row], -1))
        for row in range(out.sequences.shape[0])
    ]
