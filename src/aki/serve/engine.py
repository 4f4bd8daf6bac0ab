"""The generation engine behind ``aki chat``, ``aki demo`` and ``aki serve``: requests batched into one ``generate``.

A request is a chat (AKI messages: ``{"role", "content"}`` where content is a string or a list of
``{"type": "text", "text": ...}`` / ``{"type": "image", "image": PIL.Image}`` items) plus
:class:`SamplingParams`. :meth:`Engine.submit` renders and tokenizes it at once (so a bad request fails in the
caller, before anything is streamed) and queues it. A background thread collects queued requests for a short
window (up to ``max_batch_size`` requests or ``batch_window_s``), groups them by what ``generate`` must share
(greedy or the same temperature / top-p, MMA on or off), left-pads each group into one batch and runs one
``generate`` per group. A :class:`_BatchTracker` sees every new token of every row: it streams each row's text to
its request, applies the request's own stop strings and token limit, and finishes the row.

Greedy answers of a batch equal the answers of the same requests sent alone: the batch is left-padded with
the model's position ids derived from the attention mask, and the model's batched generation equals
per-sample generation (a property the model tests hold).
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..integration import is_mma_enabled
from ..mma import Role

FinishReason = Literal["stop", "length", "cancelled"]
Message = dict[str, Any]


class InputError(ValueError):
    """A request the engine refuses (bad messages, images or limits); ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request: ``temperature == 0`` is greedy (then ``top_p`` is unused).

    ``stop`` strings end the answer before their first occurrence (the stop string is not returned).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError(f"stop strings must be non-empty strings, got {list(self.stop)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` (their own stops and limits stay per row)."""
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every front end enforces the same limits."""

    max_images: int = 8
    max_image_bytes: int = 10 * 2**20  # encoded file size
    max_image_pixels: int = 4096 * 4096  # width * height, checked before decoding the pixels
    max_prompt_tokens: int = 4096  # after each <image> is expanded to its tokens
    max_new_tokens: int = 1024


@dataclass(frozen=True)
class Completion:
    """The finished answer of one request."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-sequence token included


class Generation:
    """A submitted request: iterate it (or ``astream``) for text pieces, or wait for its :class:`Completion`.

    Made by :meth:`Engine.submit`; with ``loop=`` its events arrive on that asyncio loop (use the ``a*``
    methods), without it on a thread-safe queue (use iteration and :meth:`result`). With ``stream=False`` only
    the completion is sent (iteration yields nothing): no wake-up of the consumer per token.
    """

    def __init__(
        self, *, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None, stream: bool = True
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.stream = stream
        self.completion: Completion | None = None
        self._loop = loop
        self._events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this request (its batch goes on); it finishes with reason ``cancelled``."""
        self._cancelled.set()

    # Called by the engine's worker thread.
    def _emit(self, kind: str, value: Any) -> None:
        if self._loop is None:
            self._events.put((kind, value))
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    def _take(self, event: tuple[str, Any]) -> str | None:
        kind, value = event
        if kind == "error":
            raise value
        if kind == "done":
            self.completion = value
            return None
        return value

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise RuntimeError("this generation was submitted with an event loop: use astream()")
        while self.completion is None:
            piece = self._take(self._events.get())
            if piece is not None:
                yield piece

    def result(self) -> Completion:
        for _ in self:
            pass
        return self.completion

    async def astream(self) -> AsyncIterator[str]:
        while self.completion is None:
            piece = self._take(await self._events.get())
            if piece is not None:
                yield piece

    async def aresult(self) -> Completion:
        async for _ in self.astream():
            pass
        return self.completion


@dataclass
class _Request:
    # input_ids / attention_mask / mma_roles (1, L) and, with images, pixel_values (N, 3, H, W)
    inputs: dict[str, torch.Tensor]
    params: SamplingParams
    mma: bool
    generation: Generation

    def batch_key(self) -> tuple:
        return (self.mma, *self.params.batch_key())


@dataclass
class EngineStats:
    """How many ``generate`` calls ran with each batch size since the engine started."""

    batch_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(size * count for size, count in self.batch_sizes.items())

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes, default=0)


class Engine:
    """Batches chat requests to one AKI model; see the module docstring.

    Example:
        >>> engine = Engine.from_pretrained("outputs/quickstart/mma")  # doctest: +SKIP
        >>> chat = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]}]
        >>> engine.submit(chat, SamplingParams(max_new_tokens=16)).result().text  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        mma: bool = True,
        limits: Limits | None = None,
        max_batch_size: int = 8,
        batch_window_s: float = 0.02,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.default_mma = mma
        self.limits = limits or Limits()
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.stats = EngineStats()
        text_config = model.config.get_text_config(decoder=True)
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self._pad_id = processor.tokenizer.pad_token_id
        self._model_lock = threading.RLock()
        self._pending: queue.Queue[_Request] = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._serve_forever, name="aki-engine", daemon=True)
        self._worker.start()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, mma: bool = True, **kwargs: Any) -> Engine:
        """Load a saved AKI directory (model + processor, e.g. ``outputs/quickstart/mma``) and start an engine."""
        model, processor = load_model(model_dir)
        return cls(model, processor, mma=mma, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Requests
    # ----------------------------------------------------------------------------------------------

    def submit(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        mma: bool | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        stream: bool = True,
    ) -> Generation:
        """Queue a chat for an answer; raises :class:`InputError` at once for a request that breaks the rules.

        ``mma`` overrides the engine's default for this request; ``loop`` and ``stream``: see :class:`Generation`.
        """
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        params = params or SamplingParams()
        if params.max_new_tokens > self.limits.max_new_tokens:
            raise InputError(
                f"max_tokens={params.max_new_tokens} is above this server's limit of {self.limits.max_new_tokens}"
            )
        inputs = self.encode(messages)
        prompt_tokens = inputs["input_ids"].shape[1]
        if prompt_tokens > self.limits.max_prompt_tokens:
            raise InputError(
                f"the prompt has {prompt_tokens} tokens (images expanded), above the limit of "
                f"{self.limits.max_prompt_tokens}"
            )
        if self.context_length is not None and prompt_tokens + params.max_new_tokens > self.context_length:
            raise InputError(
                f"the prompt has {prompt_tokens} tokens and max_tokens is {params.max_new_tokens}: together above "
                f"the model's context of {self.context_length} tokens"
            )
        generation = Generation(prompt_tokens=prompt_tokens, loop=loop, stream=stream)
        request = _Request(
            inputs=inputs, params=params, mma=self.default_mma if mma is None else mma, generation=generation
        )
        self._pending.put(request)
        return generation

    def generate(
        self, messages: Sequence[Message], params: SamplingParams | None = None, *, mma: bool | None = None
    ) -> Completion:
        """Submit and wait: the :class:`Completion` of one chat."""
        return self.submit(messages, params, mma=mma, stream=False).result()

    def encode(self, messages: Sequence[Message]) -> dict[str, torch.Tensor]:
        """The model inputs of a chat: the chat template with the generation prompt, tokens, roles, pixels."""
        prompt, images = self.render(messages)
        if len(images) > self.limits.max_images:
            raise InputError(
                f"the chat has {len(images)} images, above the limit of {self.limits.max_images}"
            )
        try:
            batch = self.processor(text=prompt, images=images or None, return_tensors="pt")
        except (ValueError, TypeError) as error:
            raise InputError(str(error)) from error
        return dict(batch)

    def render(self, messages: Sequence[Message]) -> tuple[str, list[Any]]:
        """``(prompt, images)``: the chat template's text (with ``<|assistant|>`` to answer) and the images in order."""
        check_messages(messages)
        images, plain = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                items = []
                for item in content:
                    if item.get("type") == "image":
                        images.append(item["image"])
                        items.append({"type": "image"})
                    else:
                        items.append({"type": "text", "text": item.get("text", "")})
                content = items
            plain.append({"role": message["role"], "content": content})
        try:
            prompt = self.processor.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError as error:
            raise InputError(f"the chat does not fit the AKI chat template: {error}") from error
        return prompt, images

    # ----------------------------------------------------------------------------------------------
    # The model, for work outside generation (e.g. the demo's attention view)
    # ----------------------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, *, mma: bool) -> Iterator[Any]:
        """The model with MMA on or off, while no batch runs (the worker waits until the block ends)."""
        with self._model_lock:
            self._set_mma(mma)
            yield self.model

    def _set_mma(self, enabled: bool) -> None:
        if is_mma_enabled(self.model.language_model) != enabled:
            self.model.set_mma(enabled)

    # ----------------------------------------------------------------------------------------------
    # The worker thread
    # ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker after its current batch; requests still queued fail with ``RuntimeError``."""
        self._closed.set()
        self._worker.join(timeout=60)
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                break
            request.generation._emit("error", RuntimeError("the engine was closed before this request ran"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._pending.get(timeout=0.05)
            except queue.Empty:
                continue
            requests = self._collect(first)
            groups: dict[tuple, list[_Request]] = {}
            for request in requests:
                groups.setdefault(request.batch_key(), []).append(request)
            for group in groups.values():
                self._run_batch(group)

    def _collect(self, first: _Request) -> list[_Request]:
        """``first`` and whatever else arrives within the batch window (at most ``max_batch_size`` in all)."""
        requests, deadline = [first], time.monotonic() + self.batch_window_s
        while len(requests) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                requests.append(self._pending.get(timeout=remaining))
            except queue.Empty:
                break
        return requests

    def _run_batch(self, requests: list[_Request]) -> None:
        for request in requests:
            if request.generation.cancelled:  # cancelled while queued: done without a forward
                empty = Completion("", "cancelled", request.generation.prompt_tokens, completion_tokens=0)
                request.generation._emit("done", empty)
        requests = [r for r in requests if not r.generation.cancelled]
        if not requests:
            return
        tracker = _BatchTracker(requests, tokenizer=self.processor.tokenizer, eos_ids=self._eos_ids)
        self.stats.batch_sizes[len(requests)] += 1
        try:
            with self._model_lock, torch.inference_mode():
                self._set_mma(requests[0].mma)
                inputs = left_pad([r.inputs for r in requests], pad_id=self._pad_id)
                self.model.generate(
                    **inputs,
                    generation_config=self._generation_config(requests),
                    stopping_criteria=StoppingCriteriaList([tracker]),
                )
        except Exception as error:  # one bad batch must not stop the engine
            tracker.fail(error)
            return
        tracker.finish_all("length")

    def _generation_config(self, requests: list[_Request]) -> Any:
        params = requests[0].params
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max(r.params.max_new_tokens for r in requests)
        config.max_length = None
        config.min_new_tokens = None
        config.num_beams = 1
        config.do_sample = not params.greedy
        config.temperature = None if params.greedy else params.temperature
        config.top_p = None if params.greedy else params.top_p
        config.top_k = None
        config.pad_token_id = self._pad_id
        return config


def left_pad(rows: Sequence[dict[str, torch.Tensor]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """One left-padded batch from single-request inputs (padding: ``pad_id``, attention 0, role TEXT), as
    :class:`AkiProcessor` pads; the images are concatenated in row order, which is placeholder order.
    """
    length = max(row["input_ids"].shape[1] for row in rows)
    fills = {"input_ids": pad_id, "attention_mask": 0, "mma_roles": int(Role.TEXT)}
    batch = {}
    for key, fill in fills.items():
        padded = [
            torch.cat([row[key].new_full((1, length - row[key].shape[1]), fill), row[key]], 1) for row in rows
        ]
        batch[key] = torch.cat(padded)  # (B, L)
    pixels = [row["pixel_values"] for row in rows if "pixel_values" in row]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)  # (N, 3, H, W)
    return batch


class _Row:
    """The answer of one batch row as it grows: token ids, the text streamed so far, the stop decision."""

    def __init__(self, request: _Request, tokenizer: Any, eos_ids: set[int]) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.token_ids: list[int] = []
        self.generated = 0
        self.text = ""
        self.sent = 0  # characters of self.text already streamed
        self.finished = False

    def add(self, token: int) -> None:
        params = self.request.params
        self.generated += 1
        if self.request.generation.cancelled:
            self.finish("cancelled")
            return
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.token_ids.append(token)
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        stops = [i for i in (self.text.find(s) for s in params.stop) if i >= 0]
        if stops:
            self.text = self.text[: min(stops)]
            self.finish("stop")
        elif self.generated >= params.max_new_tokens:
            self.finish("length")
        else:
            self._send(self._safe_end())

    def _safe_end(self) -> int:
        """How much of the text can be streamed: not a partial character, nor what may begin a stop string."""
        end = len(self.text.rstrip("\ufffd"))
        for stop in self.request.params.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[:end].endswith(stop[:size]):
                    end -= size
                    break
        return max(end, self.sent)

    def _send(self, end: int) -> None:
        if end > self.sent and self.request.generation.stream:
            self.request.generation._emit("text", self.text[self.sent : end])
            self.sent = end

    def finish(self, reason: FinishReason) -> None:
        self._send(len(self.text))
        self.finished = True
        completion = Completion(
            text=self.text,
            finish_reason=reason,
            prompt_tokens=self.request.generation.prompt_tokens,
            completion_tokens=self.generated,
        )
        self.request.generation._emit("done", completion)


class _BatchTracker(StoppingCriteria):
    """Follows every row of one batched ``generate`` token by token (a stopping criterion sees each new token):
    streams each row's text, applies its stop strings, token limit and cancellation, and reports finished rows.
    """

    def __init__(self, requests: list[_Request], *, tokenizer: Any, eos_ids: set[int]) -> None:
        self.rows = [_Row(request, tokenizer, eos_ids) for request in requests]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.finished:
                row.add(token)
        return torch.tensor([row.finished for row in self.rows], device=input_ids.device)

    def finish_all(self, reason: FinishReason) -> None:
        for row in self.rows:
            if not row.finished:
                row.finish(reason)

    def fail(self, error: Exception) -> None:
        for row in self.rows:
            if not row.finished:
                row.finished = True
                row.request.generation._emit("error", error)


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


def load_model(model_dir: str | Path) -> tuple[Any, Any]:
    """``(model, processor)`` of a saved AKI directory, through the Auto classes that ``import aki.models`` registers."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .. import models  # noqa: F401  (registers AKI with the Auto classes)

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved model directory (no config.json); train the tiny default with "
            "`aki train pretrain && aki train sft`, or give a directory written by save_pretrained"
        )
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return model, processor


__all__ = [
    "Completion",
    "Engine",
    "EngineStats",
    "Generation",
    "InputError",
    "Limits",
    "SamplingParams",
    "check_messages",
    "left_pad",
    "load_model",
]
