"""The generation engine behind ``aki chat``, ``aki demo`` and ``aki serve``: queued requests batched together.

A request is a chat (see :mod:`aki.generation`) plus :class:`~aki.generation.SamplingParams`.
:meth:`Engine.submit` renders and tokenizes it at once (so a bad request fails in the caller, before anything
is streamed) and queues it. A background thread collects queued requests for a short window (up to
``max_batch_size`` requests or ``batch_window_s``), groups them by what ``generate`` must share (MMA on or off,
greedy or the same temperature / top-p) and hands each group to :meth:`aki.generation.Runner.run`, which
streams each row's text to its :class:`Generation`, applies the row's own stop strings and token limit, and
stops a cancelled row. The engine itself only queues, groups and delivers (threads or asyncio).

Greedy answers of a batch equal the answers of the same requests sent alone: the batch is left-padded with
the model's position ids derived from the attention mask, and the model's batched generation equals
per-sample generation (a property the model tests hold).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..generation import Completion, InputError, Message, Runner, SamplingParams, load_model, render_chat


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every front end enforces the same limits."""

    max_images: int = 8
    max_image_bytes: int = 10 * 2**20  # encoded file size
    max_image_pixels: int = 4096 * 4096  # width * height, checked before decoding the pixels
    max_prompt_tokens: int = 4096  # after each <image> is expanded to its tokens
    max_new_tokens: int = 1024


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

    # The Sink of aki.generation, called by the engine's worker thread.
    def on_text(self, piece: str) -> None:
        if self.stream:
            self._emit("text", piece)

    def on_done(self, completion: Completion) -> None:
        self._emit("done", completion)

    def on_error(self, error: Exception) -> None:
        self._emit("error", error)

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
        self.runner = Runner(model, processor)
        self.default_mma = mma
        self.limits = limits or Limits()
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.stats = EngineStats()
        self.context_length = self.runner.context_length
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

    @property
    def model(self) -> Any:
        return self.runner.model

    @property
    def processor(self) -> Any:
        return self.runner.processor

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
        """The model inputs of a chat, within the image limit (:meth:`aki.generation.Runner.encode`)."""
        _, images = self.render(messages)
        if len(images) > self.limits.max_images:
            raise InputError(
                f"the chat has {len(images)} images, above the limit of {self.limits.max_images}"
            )
        return self.runner.encode(messages)

    def render(self, messages: Sequence[Message]) -> tuple[str, list[Any]]:
        """``(prompt, images)``: the chat template's text (with ``<|assistant|>`` to answer) and the images in order."""
        return render_chat(self.processor, messages)

    # ----------------------------------------------------------------------------------------------
    # The model, for work outside generation (e.g. the demo's attention view)
    # ----------------------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, *, mma: bool) -> Iterator[Any]:
        """The model with MMA on or off, while no batch runs (the worker waits until the block ends)."""
        with self._model_lock:
            self.runner.set_mma(mma)
            yield self.model

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
            request.generation.on_error(RuntimeError("the engine was closed before this request ran"))

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
                request.generation.on_done(empty)
        requests = [r for r in requests if not r.generation.cancelled]
        if not requests:
            return
        self.stats.batch_sizes[len(requests)] += 1
        with self._model_lock:
            self.runner.set_mma(requests[0].mma)
            self.runner.run([(r.inputs, r.params, r.generation) for r in requests])


__all__ = ["Engine", "EngineStats", "Generation", "Limits"]
