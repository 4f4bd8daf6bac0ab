"""One path from chats to answers, shared by evaluation, serving and the quickstart.

* :func:`load_model`: a saved AKI directory -> ``(model, processor)``, on :func:`default_device`.
* :func:`render_chat`: AKI messages -> the chat template's prompt text and the images in placeholder order.
* :class:`DecodeBatch`: rows decoded together one token per :meth:`~DecodeBatch.step`, with new rows admitted
  between steps (continuous batching). New rows are prefilled together, left padded by
  :meth:`~aki.models.aki.AkiProcessor.pad` (MMA sees each prompt, images included), and join the running
  rows' KV cache; generated tokens are RESPONSE, so decoding is causal and rows prefilled with and without MMA
  decode together. Every new token of a row is streamed to its :class:`Sink`, the row's own stop strings, token
  limit and sampling settings apply, and a row leaves the batch as soon as it ends or its sink is cancelled.
* :class:`Runner`: :meth:`Runner.run` answers a list of rows in one :class:`DecodeBatch` (beam search: one
  ``generate``); :meth:`Runner.generate` answers prompts (sorted by length, ``batch_size`` at a time);
  :meth:`Runner.loglikelihood` scores continuations.

Messages are ``{"role", "content"}`` with content a string or a list of ``{"type": "text", "text"}`` and
``{"type": "image", "image": PIL.Image | path | array}`` items; an optional first system message, then user and
assistant turns ending with the user's question.

Example:
    >>> runner = Runner.from_pretrained("outputs/quickstart/mma", batch_size=8)  # doctest: +SKIP
    >>> runner.generate([Prompt("what colour is the star?", [image])], SamplingParams(max_new_tokens=8))  # doctest: +SKIP
    ['red']
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import jinja2
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation import TopPLogitsWarper

from .integration import CACHE_KWARG, is_mma_enabled

__all__ = [
    "DTYPES",
    "Completion",
    "DecodeBatch",
    "InputError",
    "Message",
    "Prompt",
    "Runner",
    "SamplingParams",
    "Sink",
    "check_messages",
    "chunks",
    "default_device",
    "load_model",
    "render_chat",
]

FinishReason = Literal["stop", "length", "cancelled"]
Message = dict[str, Any]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Prompts per call for callers that decode images lazily: 16 batches bound memory and keep batches sorted.
CHUNK_BATCHES = 16

T = TypeVar("T")


class InputError(ValueError):
    """A request that cannot be answered (bad messages, images or limits); ``status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def default_device() -> str:
    """Where aki runs a model when not told: the GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one row: ``temperature == 0`` is greedy (then ``top_p`` is unused).

    ``max_new_tokens=None`` generates until the end of sequence or the model's context is full. ``stop`` strings
    end the answer before their first occurrence (the stop string is not returned). ``num_beams > 1`` is beam
    search: answers are then cut after generation and not streamed.
    """

    max_new_tokens: int | None = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    num_beams: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int)
        ):
            raise InputError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError(f"stop strings must be non-empty strings, got {list(self.stop)}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {self.num_beams}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple:
        """Beam-search rows with equal keys share one ``generate`` (a :class:`DecodeBatch` mixes any settings)."""
        decoding = ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)
        return (*decoding, self.num_beams)


@dataclass(frozen=True)
class Completion:
    """The finished answer of one row."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-sequence token included


class Sink(Protocol):
    """Where a row's answer goes as it grows: the serve engine's requests, or a plain collector."""

    @property
    def cancelled(self) -> bool: ...

    def on_text(self, piece: str) -> None: ...

    def on_done(self, completion: Completion) -> None: ...


class Prompt(NamedTuple):
    """One user turn: ``text`` and the ``images`` it shows (PIL images, arrays, tensors or file paths).

    The images go before the text, one ``<image>`` each, unless the text places them itself with ``<image>``
    markers (then the marker count must equal the image count).
    """

    text: str
    images: Sequence[Any] = ()

    def render(self, processor: Any) -> tuple[str, list[Any]]:
        """``(prompt, images)`` of this one-turn chat, as :func:`render_chat` gives them."""
        marker = processor.image_token
        if marker not in self.text:
            items = [*({"type": "image", "image": image} for image in self.images)]
            return render_chat(
                processor, [{"role": "user", "content": [*items, {"type": "text", "text": self.text}]}]
            )
        if self.text.count(marker) != len(self.images):
            raise InputError(
                f"the prompt text places {self.text.count(marker)} {marker} markers but {len(self.images)} "
                f"images were given: {self.text[:80]!r}"
            )
        prompt, _ = render_chat(processor, [{"role": "user", "content": self.text}])
        return prompt, list(self.images)


# --------------------------------------------------------------------------------------------------
# Loading and rendering
# --------------------------------------------------------------------------------------------------


def load_model(
    model_dir: str | Path,
    *,
    mma: bool | None = None,
    attn_implementation: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """``(model, processor)`` of a saved AKI directory, through the Auto classes, in eval mode.

    The weights must match the config exactly (:func:`aki.models.load_pretrained`: a missing, unexpected or
    mis-shaped tensor raises ``ValueError`` naming it). ``mma`` switches Modality-Mutual Attention on or off
    (None keeps the saved ``use_mma``);
    ``attn_implementation`` is the attention backend (None: the saved one); ``device`` defaults to
    :func:`default_device`; ``dtype`` is one of :data:`DTYPES`.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .models import load_pretrained  # (and registers AKI with the Auto classes)

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved model directory (no config.json); run `aki quickstart`, or give a "
            "directory written by save_pretrained"
        )
    processor = AutoProcessor.from_pretrained(path)
    options = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = load_pretrained(AutoModelForImageTextToText, path, dtype=DTYPES[dtype], **options)
    if mma is not None:
        model.set_mma(mma)
    return model.to(device or default_device()).eval(), processor


def check_messages(messages: Sequence[Message]) -> None:
    """Raise :class:`InputError` unless ``messages`` is a chat AKI can answer: an optional first system message,
    then user / assistant turns ending with a user turn; contents are strings or lists of text / image items.
    """
    if not messages:
        raise InputError("messages is empty: give at least one user message")
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise InputError(f"messages[{index}] has role {role!r}; use system, user or assistant")
        if role == "system" and index != 0:
            raise InputError(f"messages[{index}] is a system message; only the first message may be one")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InputError(f"messages[{index}] content must be a string or a list of parts")
        for part, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("text", "image"):
                raise InputError(f"messages[{index}] content[{part}] has type {kind!r}; use text or image")
            if kind == "image" and role != "user":
                raise InputError(
                    f"messages[{index}] is a {role} message with an image; only users send images"
                )
    if messages[-1]["role"] != "user":
        raise InputError(
            f"the last message has role {messages[-1]['role']!r}; it must be the user's question"
        )


def render_chat(processor: Any, messages: Sequence[Message]) -> tuple[str, list[Any]]:
    """``(prompt, images)``: the chat template's text, ending with the assistant header to answer after, and
    the images of the chat in order (each image item becomes one ``<image>``).
    """
    check_messages(messages)
    images, plain = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            items = []
            for item in content:
                if item["type"] == "image":
                    images.append(item["image"])
                    items.append({"type": "image"})
                else:
                    items.append({"type": "text", "text": item.get("text", "")})
            content = items
        plain.append({"role": message["role"], "content": content})
    try:
        prompt = processor.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError as error:
        raise InputError(f"the chat does not fit the chat template: {error}") from error
    return prompt, images


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class Runner:
    """Batched generation and log-likelihoods for one AKI model and its processor (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, *, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        config = model.generation_config
        unsupported = {name: getattr(config, name, None) for name in UNSUPPORTED_GENERATION_SETTINGS}
        unsupported = {name: value for name, value in unsupported.items() if value not in (None, 1.0, 0, [])}
        if unsupported:
            raise ValueError(
                f"the model's generation_config sets {unsupported}; aki's decoding applies suppress_tokens, "
                "temperature and top_p only: remove these settings from generation_config.json"
            )
        self.eos_ids = set(_as_list(config.eos_token_id))
        self.suppressed = sorted(set(_as_list(config.suppress_tokens)))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, batch_size: int = 8, **load_options: Any) -> Runner:
        """A runner on :func:`load_model` (``mma``, ``attn_implementation``, ``device``, ``dtype``)."""
        model, processor = load_model(model_dir, **load_options)
        return cls(model, processor, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mma(self) -> bool:
        """Whether Modality-Mutual Attention is on."""
        return is_mma_enabled(self.model.language_model)

    def set_mma(self, enabled: bool) -> None:
        if self.mma != enabled:
            self.model.set_mma(enabled)

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation

    @property
    def chunk_size(self) -> int:
        """How many prompts a caller that decodes images lazily should hand to one call: 16 batches."""
        return self.batch_size * CHUNK_BATCHES

    @property
    def context_length(self) -> int | None:
        text_config = self.model.config.get_text_config(decoder=True)
        return getattr(text_config, "max_position_embeddings", None)

    def encode(self, chat: Prompt | Sequence[Message]) -> dict[str, torch.Tensor]:
        """The model inputs ``(1, L)`` of one chat: prompt with the generation header, tokens, roles, pixels."""
        prompt, images = (
            chat.render(self.processor) if isinstance(chat, Prompt) else render_chat(self.processor, chat)
        )
        try:
            batch = self.processor(text=prompt, images=images or None, return_tensors="pt")
        except (ValueError, TypeError) as error:
            raise InputError(str(error)) from error
        return dict(batch)

    def token_limit(self, params: SamplingParams, prompt_tokens: int) -> int:
        """How many tokens a row may generate: ``params.max_new_tokens``, or what is left of the context."""
        if params.max_new_tokens is not None:
            return params.max_new_tokens
        if self.context_length is None:
            raise InputError("max_new_tokens is needed: the model does not say how long its context is")
        left = self.context_length - prompt_tokens
        if left < 1:
            raise InputError(
                f"the prompt has {prompt_tokens} tokens: it fills the model's context of {self.context_length}"
            )
        return left

    # ----------------------------------------------------------------------------------------------

    def decoder(self) -> DecodeBatch:
        """An empty :class:`DecodeBatch` on this runner's model (what the serve engine keeps running)."""
        return DecodeBatch(self)

    @torch.inference_mode()
    def run(self, rows: Sequence[tuple[dict[str, torch.Tensor], SamplingParams, Sink]]) -> None:
        """Answer ``rows`` of ``(inputs, params, sink)``: one :class:`DecodeBatch` until every row is done.

        Every sink gets its text pieces and its :class:`Completion`; if the batch fails, every unfinished sink
        gets ``on_error`` when it has one, else the error is raised. Rows with ``num_beams > 1`` run as one
        beam-search ``generate`` per decoding setting.
        """
        beams = [row for row in rows if row[1].num_beams > 1]
        batch = self.decoder()
        batch.admit([row for row in rows if row[1].num_beams == 1])
        while batch:
            batch.step()
        for key in dict.fromkeys(params.batch_key() for _, params, _ in beams):
            self._run_beams([row for row in beams if row[1].batch_key() == key])

    def _run_beams(self, rows: Sequence[tuple[dict[str, torch.Tensor], SamplingParams, Sink]]) -> None:
        """One beam-search ``generate``: beams reorder rows, so the finished sequences are cut afterwards."""
        tracked = [self._row(inputs, params, sink) for inputs, params, sink in rows]
        batch = self._pad([inputs for inputs, _, _ in rows])
        limit = max(row.limit for row in tracked)
        try:
            output = self.model.generate(**batch, generation_config=self._beam_config(rows[0][1], limit))
        except Exception as error:  # one bad batch must not stop a server: its rows fail, the runner goes on
            _fail(tracked, error)
            return
        for row, tokens in zip(tracked, output[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            for token in tokens:
                if row.finished:
                    break
                row.add(token)
            if not row.finished:
                row.finish("length")

    def generate(
        self,
        prompts: Sequence[Prompt | Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        on_batch: Callable[[int], Any] | None = None,
    ) -> list[str]:
        """Answer every prompt (a :class:`Prompt` or a chat), ``batch_size`` at a time; answers stripped.

        Prompts are sorted by length, longest first (less padding; memory errors surface early), and answered
        in the original order. ``on_batch(n)`` is called after each batch of ``n`` prompts.
        """
        params = params or SamplingParams()
        answers: list[str] = [""] * len(prompts)
        lengths = [len(p.text) if isinstance(p, Prompt) else sum(map(_text_length, p)) for p in prompts]
        for indices in self._batches(lengths):
            sinks = [_Collector() for _ in indices]
            self.run(
                [(self.encode(prompts[i]), params, sink) for i, sink in zip(indices, sinks, strict=True)]
            )
            for i, sink in zip(indices, sinks, strict=True):
                answers[i] = sink.completion.text.strip()
            if on_batch is not None:
                on_batch(len(indices))
        return answers

    @torch.inference_mode()
    def loglikelihood(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        *,
        on_batch: Callable[[int], Any] | None = None,
    ) -> list[tuple[float, bool]]:
        """``(log p(continuation | prompt), is_greedy)`` for every pair, the continuation as the answer.

        The continuation is written right after the assistant header and tokenized together with the prompt
        (as in training); its tokens are those after the longest common prefix of the two tokenizations.
        They are RESPONSE tokens, so with MMA the image never sees them. ``is_greedy``: every continuation
        token is the argmax of its position.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        tokenizer = self.processor.tokenizer
        results: list[tuple[float, bool]] = [(0.0, True)] * len(prompts)
        lengths = [len(prompt.text) + len(text) for prompt, text in zip(prompts, continuations, strict=True)]
        for indices in self._batches(lengths):
            rendered = [prompts[i].render(self.processor) for i in indices]
            contexts = [text for text, _ in rendered]
            full = [context + continuations[i] for context, i in zip(contexts, indices, strict=True)]
            counts = [_continuation_length(tokenizer, a, b) for a, b in zip(contexts, full, strict=True)]
            images = [images for _, images in rendered]
            batch = self.processor(
                text=full, images=images if any(images) else None, padding_side="left", return_tensors="pt"
            ).to(self.device)
            keep = max(counts) + 1
            logits = self.model(**batch, logits_to_keep=keep).logits.float()  # (B, keep, V)
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, (i, count) in enumerate(zip(indices, counts, strict=True)):
                if count == 0:
                    continue
                targets = batch["input_ids"][row, -count:]  # (count,)
                predicted = logprobs[
                    row, keep - count - 1 : keep - 1
                ]  # (count, V): position t predicts t + 1
                score = predicted.gather(-1, targets[:, None]).sum()
                results[i] = (float(score), bool((predicted.argmax(-1) == targets).all()))
            if on_batch is not None:
                on_batch(len(indices))
        return results

    # ----------------------------------------------------------------------------------------------

    def _row(self, inputs: dict[str, torch.Tensor], params: SamplingParams, sink: Sink) -> _Row:
        prompt_tokens = inputs["input_ids"].shape[1]
        limit = self.token_limit(params, prompt_tokens)
        return _Row(params, sink, prompt_tokens, limit, self.processor.tokenizer, self.eos_ids)

    def _pad(self, inputs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = self.processor.pad(list(inputs), padding_side="left")
        return {key: value.to(self.device) for key, value in batch.items()}

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, longest first, in batches of ``batch_size``."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _beam_config(self, params: SamplingParams, max_new_tokens: int) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.num_beams = params.num_beams
        config.do_sample = not params.greedy
        config.temperature = None if params.greedy else params.temperature
        config.top_p = None if params.greedy else params.top_p
        config.top_k = None
        config.pad_token_id = self.processor.tokenizer.pad_token_id
        return config


# What generate() would apply from a generation_config but DecodeBatch does not: refused, never ignored.
UNSUPPORTED_GENERATION_SETTINGS = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "min_new_tokens",
    "sequence_bias",
)


class DecodeBatch:
    """Rows decoded together, one token each per :meth:`step`; :meth:`admit` adds rows between steps.

    The batch holds one KV cache, left padded to a common length ``L`` (per layer ``(B, heads, L, head_dim)``),
    its attention mask ``(B, L)`` and each row's newest token, the next step's input. New rows are prefilled
    together (one forward, MMA on their prompts as the model is set) and joined to the cache, the shorter side
    padded on the left; a row that ends or whose sink is cancelled leaves before the next forward, and columns
    that are padding in every remaining row are cut. Positions come from the attention mask, as in
    ``generate``, so a row's greedy answer is the one it gets alone. A cache whose layers are not plain
    :class:`~transformers.cache_utils.DynamicLayer` (sliding windows) cannot be joined: it admits rows only
    when empty (``accepts_rows``).
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None  # (B, L): 1 on tokens, 0 on left padding
        self.last_tokens: torch.Tensor | None = None  # (B,): each row's newest token
        self.joinable = True
        self.generated = 0  # tokens chosen since the batch was made (all rows)
        self.after_cancel = 0  # of them, tokens of rows already cancelled (dropped at once)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def accepts_rows(self) -> bool:
        """Whether :meth:`admit` can run now (always, unless running rows hold a cache that cannot be joined)."""
        return not self.rows or self.joinable

    @torch.inference_mode()
    def admit(self, rows: Sequence[tuple[dict[str, torch.Tensor], SamplingParams, Sink]]) -> None:
        """Prefill ``rows`` of ``(inputs, params, sink)`` together; each gets its first token at once.

        If the prefill fails, these rows fail (``on_error``, or the error is raised when a sink has none);
        the running rows go on.
        """
        if not rows:
            return
        if not self.accepts_rows:
            raise RuntimeError("this batch cannot admit rows while it runs (its cache cannot be joined)")
        if any(params.num_beams > 1 for _, params, _ in rows):
            raise ValueError("beam search rows cannot join a decode batch: use Runner.run")
        new = [self.runner._row(inputs, params, sink) for inputs, params, sink in rows]
        batch = self.runner._pad([inputs for inputs, _, _ in rows])
        cache = DynamicCache(config=self.runner.model.config.get_text_config(decoder=True))
        try:
            logits = self._forward(batch, cache)
        except Exception as error:  # one bad request must not stop a server: its rows fail, the batch goes on
            _fail(new, error)
            return
        tokens = self._choose(logits, new)
        keep = [i for i, row in enumerate(new) if not row.finished]
        if not keep:
            return
        index = torch.tensor(keep, device=self.runner.device)
        for layer in cache.layers:
            layer.batch_select_indices(index)
        self._join(
            [new[i] for i in keep],
            cache,
            batch["attention_mask"][index],
            torch.tensor([tokens[i] for i in keep]),
        )

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every running row (cancelled rows leave first); rows that end leave the batch.

        If the forward fails, every running row fails (see :meth:`admit`) and the batch is empty again.
        """
        self._leave([i for i, row in enumerate(self.rows) if not row.sink.cancelled and not row.finished])
        if not self.rows:
            return
        ones = torch.ones_like(self.attention_mask[:, :1])
        attention_mask = torch.cat([self.attention_mask, ones], dim=1)  # (B, L + 1)
        inputs = {
            "input_ids": self.last_tokens[:, None].to(self.runner.device),
            "attention_mask": attention_mask,
        }
        try:
            logits = self._forward(inputs, self.cache)
        except Exception as error:
            rows, self.rows = self.rows, []
            self._clear()
            _fail(rows, error)
            return
        self.attention_mask = attention_mask
        self.last_tokens = torch.tensor(self._choose(logits, self.rows))
        self._leave([i for i, row in enumerate(self.rows) if not row.finished])

    def fail(self, error: Exception) -> None:
        """End every running row with ``error`` (the engine closing); the batch is empty afterwards."""
        rows, self.rows = self.rows, []
        self._clear()
        _fail(rows, error)

    # ----------------------------------------------------------------------------------------------

    def _forward(self, inputs: dict[str, torch.Tensor], cache: DynamicCache) -> torch.Tensor:
        """Logits ``(B, V)`` (float32) of the last position; ``cache`` grows by the inputs' length."""
        outputs = self.runner.model(**inputs, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
        return outputs.logits[:, -1].float()

    def _choose(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """The next token of each row (greedy argmax, or sampled with its temperature and top-p), added to it."""
        if self.runner.suppressed:
            logits[:, self.runner.suppressed] = -math.inf
        tokens = logits.argmax(-1).tolist()
        self.after_cancel += sum(row.sink.cancelled for row in rows)
        for i, row in enumerate(rows):
            if not row.params.greedy:
                tokens[i] = _sample(logits[i], row.params)
            row.add(tokens[i])
        self.generated += len(rows)
        return tokens

    def _join(
        self, rows: list[_Row], cache: DynamicCache, attention_mask: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        """Add prefilled rows (their cache, mask ``(b, L')`` and first tokens) to the running ones."""
        joinable = all(type(layer) is DynamicLayer for layer in cache.layers)
        if not self.rows:
            self.cache, self.attention_mask, self.last_tokens = cache, attention_mask, tokens
            self.rows, self.joinable = rows, joinable
            return
        length = max(self.attention_mask.shape[1], attention_mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, length, dim=-2), _pad_left(new.keys, length, dim=-2)])
            old.values = torch.cat(
                [_pad_left(old.values, length, dim=-2), _pad_left(new.values, length, dim=-2)]
            )
        self.attention_mask = torch.cat(
            [_pad_left(self.attention_mask, length, dim=-1), _pad_left(attention_mask, length, dim=-1)]
        )
        self.last_tokens = torch.cat([self.last_tokens, tokens])
        self.rows = [*self.rows, *rows]

    def _leave(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (finishing cancelled ones), then cut all-padding columns."""
        kept = set(keep)
        for i, row in enumerate(self.rows):
            if i not in kept and not row.finished:
                row.finish("cancelled")
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows = []
            self._clear()
            return
        self.rows = [self.rows[i] for i in keep]
        index = torch.tensor(keep, device=self.runner.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.last_tokens = self.last_tokens[torch.tensor(keep)]
        start = int(self.attention_mask.any(dim=0).long().argmax())  # the first column some row uses
        if start and self.joinable:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self.attention_mask = self.attention_mask[:, start:]

    def _clear(self) -> None:
        self.cache = self.attention_mask = self.last_tokens = None
        self.joinable = True


class _Collector:
    """A :class:`Sink` that keeps the completion (never cancelled)."""

    cancelled = False
    completion: Completion | None = None

    def on_text(self, piece: str) -> None:
        pass

    def on_done(self, completion: Completion) -> None:
        self.completion = completion


class _Row:
    """The answer of one batch row as it grows: token ids, the text streamed so far, the stop decision."""

    def __init__(
        self,
        params: SamplingParams,
        sink: Sink,
        prompt_tokens: int,
        limit: int,
        tokenizer: Any,
        eos_ids: set[int],
    ) -> None:
        self.params = params
        self.sink = sink
        self.prompt_tokens = prompt_tokens
        self.limit = limit  # most tokens to generate
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.token_ids: list[int] = []
        self.generated = 0
        self.text = ""
        self.sent = 0  # characters of self.text already streamed
        self.finished = False

    def add(self, token: int) -> None:
        self.generated += 1
        if self.sink.cancelled:
            self.finish("cancelled")
            return
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.token_ids.append(token)
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        stops = [i for i in (self.text.find(s) for s in self.params.stop) if i >= 0]
        if stops:
            self.text = self.text[: min(stops)]
            self.finish("stop")
        elif self.generated >= self.limit:
            self.finish("length")
        else:
            self._send(self._safe_end())

    def _safe_end(self) -> int:
        """How much of the text can be streamed: not a partial character, nor what may begin a stop string."""
        end = len(self.text.rstrip("\ufffd"))
        for stop in self.params.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[:end].endswith(stop[:size]):
                    end -= size
                    break
        return max(end, self.sent)

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.sink.on_text(self.text[self.sent : end])
            self.sent = end

    def finish(self, reason: FinishReason) -> None:
        self._send(len(self.text))
        self.finished = True
        self.sink.on_done(Completion(self.text, reason, self.prompt_tokens, self.generated))


def _fail(rows: Sequence[_Row], error: Exception) -> None:
    """Pass ``error`` to every unfinished row's sink; raise it if some sink takes no errors."""
    handled = True
    for row in rows:
        if not row.finished:
            row.finished = True
            on_error = getattr(row.sink, "on_error", None)
            if on_error is None:
                handled = False
            else:
                on_error(error)
    if not handled:
        raise error


def _sample(logits: torch.Tensor, params: SamplingParams) -> int:
    """One token drawn from ``logits`` ``(V,)`` with the row's temperature, then top-p, as ``generate`` does."""
    scores = logits[None] / params.temperature  # (1, V)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(top_p=params.top_p)(None, scores)
    return int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1))


def _pad_left(tensor: torch.Tensor, length: int, *, dim: int) -> torch.Tensor:
    """``tensor`` with zeros in front along ``dim`` (-1 or -2) up to ``length``."""
    gap = length - tensor.shape[dim]
    if gap == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (gap, 0) if dim == -1 else (0, 0, gap, 0))


def _as_list(value: Any) -> list[int]:
    return value if isinstance(value, list) else [] if value is None else [value]


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _text_length(message: Message) -> int:
    content = message["content"]
    return len(content) if isinstance(content, str) else sum(len(item.get("text", "")) for item in content)


def _continuation_length(tokenizer: Any, context: str, full: str) -> int:
    """Tokens of ``full`` after its longest common prefix with ``context`` (placeholders not yet expanded)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    common = next(
        (i for i, (a, b) in enumerate(zip(context_ids, full_ids, strict=False)) if a != b),
        min(len(context_ids), len(full_ids)),
    )
    return len(full_ids) - common
