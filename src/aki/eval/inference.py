"""Batched inference of a saved AKI model for evaluation: generation and log-likelihoods.

:class:`AkiRunner` wraps a loaded :class:`~aki.models.AkiForConditionalGeneration` and its
:class:`~aki.models.AkiProcessor`. A :class:`Prompt` is one user turn (text and images); the runner puts it in
the AKI chat template, sorts the prompts by length, runs them ``batch_size`` at a time (left-padded, with the
processor's MMA roles) and returns the answers in the original order. Both ``aki eval run`` and the
lmms-eval plugin (:mod:`aki.eval.lmms_eval_model`) call it.

Example:
    >>> runner = AkiRunner.from_pretrained("checkpoints/aki-tiny", batch_size=8)  # doctest: +SKIP
    >>> runner.generate([Prompt("Is there a cat?", [image])], max_new_tokens=8)  # doctest: +SKIP
    ['Yes']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..integration import is_mma_enabled
from ..models import AkiForConditionalGeneration, AkiProcessor

__all__ = ["AkiRunner", "Prompt", "chunks"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Batches of prompts per call for callers that decode images lazily: bounds memory, keeps batches length-sorted.
CHUNK_BATCHES = 16

T = TypeVar("T")


class Prompt(NamedTuple):
    """One user turn: ``text`` and the ``images`` it shows (PIL images, arrays, tensors or file paths).

    The images go before the text, one ``<image>`` each, unless the text places them itself with
    ``<image>`` markers (then the marker count must equal the image count).
    """

    text: str
    images: Sequence[Any] = ()


class AkiRunner:
    """Batched ``generate`` and ``loglikelihood`` over :class:`Prompt` lists for one AKI model."""

    def __init__(
        self, *, model: AkiForConditionalGeneration, processor: AkiProcessor, batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        mma: bool | None = None,
        attn_implementation: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 8,
    ) -> AkiRunner:
        """Load a saved AKI directory (model + processor).

        ``mma`` switches Modality-Mutual Attention on or off (None keeps the saved config's ``use_mma``);
        ``attn_implementation`` is the attention backend (``sdpa``, ``eager``, ``flex_attention``; None =
        transformers' default); ``device`` defaults to CUDA when available; ``dtype`` is one of
        ``float32``, ``bfloat16``, ``float16``.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AkiForConditionalGeneration.from_pretrained(
            path, attn_implementation=attn_implementation, dtype=DTYPES[dtype]
        )
        if mma is not None:
            model.set_mma(mma)
        processor = AkiProcessor.from_pretrained(path)
        return cls(model=model.to(device), processor=processor, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mma(self) -> bool:
        """Whether Modality-Mutual Attention is on."""
        return is_mma_enabled(self.model.language_model)

    @property
    def attn_implementation(self) -> str:
        """The attention backend the model was loaded with (``sdpa``, ``eager``, ...)."""
        return self.model.config._attn_implementation

    @property
    def chunk_size(self) -> int:
        """How many prompts a caller that decodes images lazily should hand to one call: 16 batches."""
        return self.batch_size * CHUNK_BATCHES

    def chat_text(self, prompt: Prompt) -> str:
        """The full AKI chat prompt of one user turn, ending with the assistant header."""
        marker = self.processor.image_token
        if marker in prompt.text:
            if prompt.text.count(marker) != len(prompt.images):
                raise ValueError(
                    f"the prompt text places {prompt.text.count(marker)} {marker} markers but "
                    f"{len(prompt.images)} images were given: {prompt.text[:80]!r}"
                )
            content: str | list[dict] = prompt.text
        else:
            content = [{"type": "image"} for _ in prompt.images] + [{"type": "text", "text": prompt.text}]
        chat = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(chat, add_generation_prompt=True)

    # ----------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        num_beams: int = 1,
        on_batch: Callable[[int], Any] | None = None,
    ) -> list[str]:
        """Answer every prompt; each answer is cut before the first ``stop`` string and stripped.

        Generation of a row ends at the end-of-sequence token, at a stop string or after ``max_new_tokens``.
        ``on_batch(n)`` is called after each batch of ``n`` prompts (a progress bar's ``update``).
        """
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        options.update({"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {})
        stop = [text for text in stop if text]
        answers: list[str] = [""] * len(prompts)
        for indices in self._batches([len(prompt.text) for prompt in prompts]):
            batch = self._encode([self.chat_text(prompts[i]) for i in indices], [prompts[i] for i in indices])
            prompt_length = batch["input_ids"].shape[1]
            criteria = StoppingCriteriaList([_StopStrings(self.processor.tokenizer, stop, prompt_length)])
            output = self.model.generate(**batch, **options, stopping_criteria=criteria if stop else None)
            texts = self.processor.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
            for i, text in zip(indices, texts, strict=True):
                answers[i] = _cut(text, stop).strip()
            if on_batch is not None:
                on_batch(len(indices))
        return answers

    # ----------------------------------------------------------------------------------------------
    # Log-likelihood
    # ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def loglikelihood(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        *,
        on_batch: Callable[[int], Any] | None = None,
    ) -> list[tuple[float, bool]]:
        """``(log p(continuation | prompt), is_greedy)`` for every pair, the continuation as the answer.

        The continuation is written right after the assistant header and tokenized together with the
        prompt (as in training); its tokens are those after the longest common prefix of the two
        tokenizations. They are RESPONSE tokens, so with MMA the image never sees them. ``is_greedy``: every
        continuation token is the argmax of its position.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        tokenizer = self.processor.tokenizer
        results: list[tuple[float, bool]] = [(0.0, True)] * len(prompts)
        lengths = [len(prompt.text) + len(text) for prompt, text in zip(prompts, continuations, strict=True)]
        for indices in self._batches(lengths):
            contexts = [self.chat_text(prompts[i]) for i in indices]
            full = [context + continuations[i] for context, i in zip(contexts, indices, strict=True)]
            counts = [_continuation_length(tokenizer, a, b) for a, b in zip(contexts, full, strict=True)]
            batch = self._encode(full, [prompts[i] for i in indices])
            keep = max(counts) + 1
            logits = self.model(**batch, logits_to_keep=keep).logits.float()  # (B, keep, V)
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, (i, count) in enumerate(zip(indices, counts, strict=True)):
                if count == 0:
                    continue
                targets = batch["input_ids"][row, -count:]  # (count,)
                # (count, V): the logits at position t predict the token at t + 1
                predicted = logprobs[row, keep - count - 1 : keep - 1]
                score = predicted.gather(-1, targets[:, None]).sum()
                results[i] = (float(score), bool((predicted.argmax(-1) == targets).all()))
            if on_batch is not None:
                on_batch(len(indices))
        return results

    # ----------------------------------------------------------------------------------------------

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, longest first (less padding, memory errors surface early), in batches."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _encode(self, texts: list[str], prompts: list[Prompt]):
        images = [list(prompt.images) for prompt in prompts]
        batch = self.processor(
            text=texts, images=images if any(images) else None, padding_side="left", return_tensors="pt"
        )
        return batch.to(self.device)


class _StopStrings(StoppingCriteria):
    """Ends a row once its generated text contains a stop string (any tokenizer; decoding is cheap here)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(marker in text for marker in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest stop string."""
    positions = [text.find(marker) for marker in stop if marker in text]
    return text[: min(positions)] if positions else text


def _continuation_length(tokenizer: Any, context: str, full: str) -> int:
    """Tokens of ``full`` after its longest common prefix with ``context`` (placeholders not yet expanded)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    common = next(
        (i for i, (a, b) in enumerate(zip(context_ids, full_ids, strict=False)) if a != b),
        min(len(context_ids), len(full_ids)),
    )
    return len(full_ids) - common
