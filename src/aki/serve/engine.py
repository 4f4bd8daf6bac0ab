"""The generation engine behind ``aki chat``, ``aki demo`` and ``aki serve``: queued requests batched together.

A request is a chat (see :mod:`aki.generation`) plus :class:`~aki.generation.SamplingParams`.
:meth:`Engine.submit` checks it against the :class:`Limits` (sizes first, before the chat is rendered), renders
and tokenizes it at once (so a bad request fails in the caller, before anything is streamed) and queues it.

A background thread keeps one :class:`~aki.generation.DecodeBatch` running (continuous batching): between two
decoding steps it admits the requests that arrived, up to ``max_batch_size`` running rows, prefilled together
per MMA setting; when nothing runs it first waits ``batch_window_s`` for more requests to arrive together. So
a short request never waits for a long one to finish: it joins at the next step and leaves when done. The
batch streams each row's text to its :class:`Generation`, applies the row's own stop strings, token limit and
sampling, and drops a cancelled row before the next step. The engine itself only queues, admits and delivers
(threads or asyncio).

Greedy answers equal the answers of the same requests sent alone: rows are left padded, positions derive from
the attention mask, and decoding is causal whatever the MMA setting (generated tokens are RESPONSE); the
serving tests compare them token for token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
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
    max_request_pixels: int = 4096 * 4096  # all images of one request together, checked before decoding
    max_prompt_tokens: int = 4096  # after each <image> is expanded to its tokens
    max_prompt_chars: int | None = None  # text characters before templating; None: 16 per prompt token
    max_parts: int = 1024  # messages plus content parts
    max_new_tokens: int = 1024

    @property
    def prompt_chars(self) -> int:
        """The character limit of a chat's text: ``max_prompt_chars``, or 16 per allowed prompt token."""
        return self.max_prompt_chars if self.max_prompt_chars is not None else 16 * self.max_prompt_tokens

    def check_chat(self, messages: Any) -> None:
        """Refuse a chat (AKI messages or the raw OpenAI JSON) by its size before any work is done on it:
        too many messages and parts, images or characters of text. Malformed parts are left to the parser.
        """
        if not isinstance(messages, list):
            return
        parts = images = chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            items = [content] if isinstance(content, str) else content if isinstance(content, list) else []
            parts += 1 + (len(items) if isinstance(content, list) else 0)
            for item in items:
                if isinstance(item, str):
                    chars += len(item)
                elif isinstance(item, dict):
                    images += str(item.get("type", "")).startswith("image")
                    text = item.get("text")
                    chars += len(text) if isinstance(text, str) else 0
        if parts > self.max_parts:
            raise InputError(f"the chat has {parts} messages and parts, above the limit of {self.max_parts}")
        if images > self.max_images:
            raise InputError(f"the chat has {images} images, above the limit of {self.max_images}")
        if chars > self.prompt_chars:
            raise InputError(
                f"the chat has {chars} characters of text, above the limit of {self.prompt_chars} "
                f"(the prompt may have at most {self.max_prompt_tokens} tokens)"
            )


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
        self._finished = False
        self._callbacks: list[Callable[[], Any]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this request (its batch goes on); it finishes with reason ``cancelled``."""
        self._cancelled.set()

    def add_done_callback(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (from the engine's thread) once the request has finished or failed; at once if it
        already has.
        """
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return
        callback()

    # The Sink of aki.generation, called by the engine's worker thread.
    def on_text(self, piece: str) -> None:
        if self.stream:
            self._emit("text", piece)

    def on_done(self, completion: Completion) -> None:
        self._emit("done", completion)
        self._finish()

    def on_error(self, error: Exception) -> None:
        self._emit("error", error)
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._finished, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()

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


@dataclass
class EngineStats:
    """What the engine did since it started: how many rows each prefill admitted together, how many rows each
    decoding step ran, how many tokens were generated in all, and how many of them for requests that had been
    cancelled already (a cancelled request gets at most the token of the step in progress).
    """

    prefills: Counter[int] = field(default_factory=Counter)
    steps: Counter[int] = field(default_factory=Counter)
    generated_tokens: int = 0
    tokens_after_cancel: int = 0

    @property
    def requests(self) -> int:
        return sum(size * count for size, count in self.prefills.items())

    @property
    def largest_batch(self) -> int:
        """The most rows that ran one decoding step together."""
        return max(self.steps, default=0)


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
        self._batch = self.runner.decoder()
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

    @property
    def load(self) -> dict[str, int]:
        """Requests waiting to be admitted and rows running now."""
        return {"queued": self._pending.qsize(), "running": len(self._batch)}

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

        ``params.max_new_tokens=None`` is what is left of the model's context (within the limit).
        ``mma`` overrides the engine's default for this request; ``loop`` and ``stream``: see :class:`Generation`.
        """
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        params = params or SamplingParams()
        if params.max_new_tokens is not None and params.max_new_tokens > self.limits.max_new_tokens:
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
        if params.max_new_tokens is None:
            left = self.runner.token_limit(params, prompt_tokens)
            params = dataclasses.replace(params, max_new_tokens=min(left, self.limits.max_new_tokens))
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
        """The model inputs of a chat within the size limits (:meth:`Limits.check_chat`, then
        :meth:`aki.generation.Runner.encode`).
        """
        self.limits.check_chat(list(messages))
        return self.runner.encode(messages)

    def render(self, messages: Sequence[Message]) -> tuple[str, list[Any]]:
        """``(prompt, images)``: the chat template's text (with ``<|assistant|>`` to answer) and the images in order."""
        return render_chat(self.processor, messages)

    # ----------------------------------------------------------------------------------------------
    # The model, for work outside generation (e.g. the demo's attention view)
    # ----------------------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, *, mma: bool) -> Iterator[Any]:
        """The model with MMA on or off, between two decoding steps (the worker waits until the block ends)."""
        with self._model_lock:
            previous = self.runner.mma
            self.runner.set_mma(mma)
            try:
                yield self.model
            finally:
                self.runner.set_mma(previous)

    # ----------------------------------------------------------------------------------------------
    # The worker thread
    # ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker after its current step; running and queued requests fail with ``RuntimeError``."""
        self._closed.set()
        self._worker.join(timeout=60)
        closed = RuntimeError("the engine was closed before this request finished")
        with self._model_lock:
            self._batch.fail(closed)
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                break
            request.generation.on_error(closed)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                self._admit(self._arrivals())
                if self._batch:
                    self._step()
            except Exception as error:  # a bug here must fail the running requests, not hang them
                with self._model_lock:
                    self._batch.fail(error)

    def _step(self) -> None:
        with self._model_lock:
            rows, before, wasted = len(self._batch), self._batch.generated, self._batch.after_cancel
            self._batch.step()
            self.stats.steps[rows] += 1
            self.stats.generated_tokens += self._batch.generated - before
            self.stats.tokens_after_cancel += self._batch.after_cancel - wasted

    def _arrivals(self) -> list[_Request]:
        """Requests to admit now: when idle, the first to arrive and whatever follows within the batch window;
        while rows run, whatever is queued (no waiting); never more than the free rows of the batch.
        """
        room = self.max_batch_size - len(self._batch)
        if room <= 0 or not self._batch.accepts_rows:
            return []
        if self._batch:
            requests = []
            while len(requests) < room and (request := self._next_nowait()) is not None:
                requests.append(request)
            return requests
        try:
            first = self._pending.get(timeout=0.05)
        except queue.Empty:
            return []
        requests, deadline = [first], time.monotonic() + self.batch_window_s
        while len(requests) < room:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                requests.append(self._pending.get(timeout=remaining))
            except queue.Empty:
                break
        return requests

    def _next_nowait(self) -> _Request | None:
        try:
            return self._pending.get_nowait()
        except queue.Empty:
            return None

    def _admit(self, requests: list[_Request]) -> None:
        """Prefill the arrivals, one group per MMA setting (requests cancelled while queued end here)."""
        groups: dict[tuple[bool, bool], list[_Request]] = {}
        for request in requests:
            if request.generation.cancelled:  # cancelled while queued: done without a forward
                empty = Completion("", "cancelled", request.generation.prompt_tokens, completion_tokens=0)
                request.generation.on_done(empty)
            else:
                groups.setdefault((request.mma, request.params.num_beams > 1), []).append(request)
        for (mma, beams), group in groups.items():
            rows = [(r.inputs, r.params, r.generation) for r in group]
            with self._model_lock:
                self.runner.set_mma(mma)
                before = self._batch.generated
                self.stats.prefills[len(group)] += 1
                if beams:  # beam search reorders rows: it runs on its own, the batch waits
                    self.runner.run(rows)
                else:
                    self._batch.admit(rows)
                self.stats.generated_tokens += self._batch.generated - before


__all__ = ["Engine", "EngineStats", "Generation", "Limits"]
