"""The lmms-eval model plugin: ``lmms-eval --model aki --model_args pretrained=DIR,mma=true,...``.

lmms-eval (>= 0.7) finds models through the entry-point group ``lmms_eval.models``; aki's
``pyproject.toml`` declares ``aki = "aki.eval.lmms_eval_model:MANIFEST"`` there, so installing aki is enough
(lmms-eval itself is not edited, and this module is imported only by lmms-eval). Model args:

- ``pretrained``: a saved AKI directory (``save_pretrained`` of the model and the processor);
- ``mma``: ``true`` / ``false`` switches Modality-Mutual Attention (default: the saved config's ``use_mma``);
- ``attn_implementation``: ``sdpa`` (default), ``eager`` or ``flex_attention``;
- ``device``, ``dtype`` (``float32``, ``bfloat16``, ``float16``), ``batch_size`` (also ``--batch_size``);
- ``max_new_tokens``: used when a task's ``generation_kwargs`` set none (default 64).

Requests: ``generate_until`` is batched (grouped by generation kwargs; ``until`` strings end a row and are
cut off); ``loglikelihood`` scores the continuation as the assistant's answer (its leading whitespace, the
task's target delimiter, is dropped: in the AKI template an answer starts right after ``<|assistant|>\\n``)
and returns ``(-log p(continuation), is_greedy)``: lmms-eval 0.7.3 picks a multiple-choice answer with
``argmin`` over the first value, and its own models return a loss there, so the plugin returns the negative
log-likelihood (summed over the continuation's tokens). Each pair is wrapped in a ``GenerationResult``: the
0.7.3 evaluator turns any other non-text result into its ``str`` (``unwrap_generation_output``), which breaks
every loglikelihood and multiple-choice task, but passes a ``GenerationResult``'s ``text`` through unchanged;
``generate_until_multi_round`` follows lmms-eval's protocol: round 0 is the request's context and
``doc_to_visual`` images, then ``doc_to_text(doc, previous_output=..., round_idx=k, previous_round_info=...)``
returns ``(images, context, terminal, outputs, round_info)`` for round k; each round is a fresh user turn
(the task writes earlier answers into the context when it wants them), documents of a batch stop
independently, and each request's result is its list of answers, one per round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from tqdm import tqdm

from ..generation import Prompt, Runner, SamplingParams, chunks

__all__ = ["MANIFEST", "AkiLmms"]

MANIFEST = ModelManifest(model_id="aki", simple_class_path="aki.eval.lmms_eval_model.AkiLmms")


class AkiLmms(lmms):
    """An AKI checkpoint as an lmms-eval ``simple`` model; see the module docstring for its model args."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        mma: bool | None = None,
        attn_implementation: str | None = "sdpa",
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_new_tokens: int = 64,
        max_batch_size: int | None = None,  # lmms-eval passes it for batch_size=auto, which aki does not do
    ) -> None:
        super().__init__()
        if not isinstance(mma, bool | None):
            raise TypeError(f"model arg mma must be true or false, got {mma!r}")
        if not str(batch_size).isdigit():
            raise ValueError(f"model arg batch_size must be a positive number, got {batch_size!r}")
        self.runner = Runner.from_pretrained(
            pretrained,
            mma=mma,
            attn_implementation=attn_implementation,
            device=device,
            dtype=dtype,
            batch_size=int(batch_size),
        )
        self.max_new_tokens = int(max_new_tokens)
        self._device = self.runner.device

    @property
    def model(self):
        return self.runner.model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    # ----------------------------------------------------------------------------------------------
    # Request types
    # ----------------------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batched greedy (or sampled) answers, grouped by the requests' generation kwargs."""
        answers: list[str] = [""] * len(requests)
        options_of = [self._generation_options(request.args[1]) for request in requests]
        with self._progress(len(requests), "aki generate_until") as bar:
            for options, indices in self._grouped(range(len(requests)), options_of.__getitem__):
                for chunk in self._chunks(indices):
                    prompts = []
                    for i in chunk:
                        context, _, doc_to_visual, doc_id, task, split = requests[i].args
                        prompts.append(Prompt(context, self._images(doc_to_visual, doc_id, task, split)))
                    texts = self.runner.generate(prompts, options, on_batch=bar.update)
                    for i, text in zip(chunk, texts, strict=True):
                        answers[i] = text
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """``(-log p(continuation | context, images), is_greedy)`` per request (lower is likelier), batched;
        each pair in a ``GenerationResult`` (see the module docstring).
        """
        results: list[GenerationResult] = []
        with self._progress(len(requests), "aki loglikelihood") as bar:
            for chunk in self._chunks(list(range(len(requests)))):
                prompts, continuations = [], []
                for i in chunk:
                    args = requests[i].args
                    if len(args) == 2:  # unconditional request of acc_mutual_info: no document, no image
                        context, continuation, images = args[0], args[1], []
                    else:
                        context, target, doc_to_visual, doc_id, task, split = args
                        doc = self.task_dict[task][split][doc_id]
                        continuation = target if isinstance(target, str) else str(target(doc))
                        images = self._images(doc_to_visual, doc_id, task, split)
                    prompts.append(Prompt(context, images))
                    continuations.append(continuation.lstrip())
                scores = self.runner.loglikelihood(prompts, continuations, on_batch=bar.update)
                results += [GenerationResult(text=(-value, greedy)) for value, greedy in scores]
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds of fresh user turns per document, batched across documents; see the module docstring."""
        states = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            states.append(
                {
                    "doc": self.task_dict[task][split][doc_id],
                    "doc_to_text": doc_to_text,
                    "prompt": Prompt(context, self._images(doc_to_visual, doc_id, task, split)),
                    "options": self._generation_options(gen_kwargs),
                    "outputs": [],
                    "info": None,
                }
            )
        active = list(range(len(requests)))
        round_index = 0
        while active:
            with self._progress(len(active), f"aki round {round_index}") as bar:
                for options, indices in self._grouped(active, lambda i: states[i]["options"]):
                    for chunk in self._chunks(indices):
                        prompts = [states[i]["prompt"] for i in chunk]
                        texts = self.runner.generate(prompts, options, on_batch=bar.update)
                        for i, text in zip(chunk, texts, strict=True):
                            states[i]["outputs"].append(text)
            round_index += 1
            still_active = []
            for i in active:
                state = states[i]
                images, context, terminal, outputs, info = state["doc_to_text"](
                    state["doc"],
                    previous_output=state["outputs"],
                    round_idx=round_index,
                    previous_round_info=state["info"],
                )
                if outputs is not None:  # the task may rewrite the answers (e.g. from its own cache)
                    state["outputs"] = list(outputs)
                if not terminal:
                    state["prompt"] = Prompt(context, self._as_images(images))
                    state["info"] = info
                    still_active.append(i)
            active = still_active
        return [state["outputs"] for state in states]

    # ----------------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------------

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> SamplingParams:
        """lmms-eval generation kwargs -> :class:`aki.generation.SamplingParams` (other keys are ignored)."""
        until = gen_kwargs.get("until") or []
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        return SamplingParams(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            stop=(until,) if isinstance(until, str) else tuple(text for text in until if text),
            num_beams=int(gen_kwargs.get("num_beams") or 1),
            temperature=(temperature or 1.0) if do_sample else 0.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0) if do_sample else 1.0,
        )

    @staticmethod
    def _grouped(
        indices, options_of: Callable[[int], SamplingParams]
    ) -> list[tuple[SamplingParams, list[int]]]:
        """Indices grouped by equal generation options (one ``generate`` call cannot mix them)."""
        groups: dict[SamplingParams, list[int]] = defaultdict(list)
        for i in indices:
            groups[options_of(i)].append(i)
        return list(groups.items())

    def _chunks(self, indices: Sequence[int]) -> list[Sequence[int]]:
        return chunks(indices, self.runner.chunk_size)

    def _images(self, doc_to_visual: Callable, doc_id: int, task: str, split: str) -> list[Image.Image]:
        return self._as_images(doc_to_visual(self.task_dict[task][split][doc_id]))

    @staticmethod
    def _as_images(visuals: Any) -> list[Image.Image]:
        """A task's visuals as a list of RGB images; AKI reads images only (no video or audio)."""
        if visuals is None:
            return []
        visuals = visuals if isinstance(visuals, list | tuple) else [visuals]
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise TypeError(
                    f"AKI takes images, but the task gave a {type(visual).__name__} visual "
                    f"({str(visual)[:60]!r}); video and audio tasks are not supported"
                )
        return [visual.convert("RGB") for visual in visuals]

    def _progress(self, total: int, description: str) -> tqdm:
        return tqdm(total=total, desc=description, disable=self.rank != 0)
