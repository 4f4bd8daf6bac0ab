"""``aki serve``: an OpenAI-compatible ``POST /v1/chat/completions`` (FastAPI) on the batching :class:`Engine`.

Concurrent requests meet in the engine, which decodes them together (continuous batching). Every limit is
checked before the work it bounds, cheapest first: the API key, the number of requests in flight (429 above
``max_concurrent_requests``, as TGI does), the body size, the chat's size on the raw JSON, each image's bytes and
header size, then the tokens of the prompt. Images are decoded in at most ``image_decode_slots`` requests at
once, so decoded pixels stay bounded however many clients send them. A request that breaks a rule gets a 4xx
with an OpenAI error object naming the problem; nothing a client sends stops the server. A client that goes
away stops its generation within one decoding step, streaming or not. Also ``GET /v1/models`` and
``GET /health`` (which also reports the engine's load).

Example:
    >>> app = create_app(Engine.from_pretrained("outputs/quickstart/mma"), ServerSettings(api_key="secret"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..generation import Completion, InputError, SamplingParams
from .engine import Engine, Generation
from .protocol import (
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    completion_id,
    error_body,
    parse_request,
    sse,
    to_engine_messages,
)


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP layer adds to the engine's :class:`~aki.serve.engine.Limits`.

    * ``default_max_tokens``: for requests without ``max_tokens``; None is what is left of the model's
      context, within the engine's ``max_new_tokens``.
    * ``max_request_bytes`` defaults to room for the engine's ``max_images`` images as base64 plus 1 MiB of text.
    * ``image_dir`` enables ``image_url`` parts that name local files inside it (off by default).
    * ``api_key``: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>`` (401 otherwise).
    * ``max_concurrent_requests``: chat requests in flight (queued, decoding images or generating); more get
      429 at once. ``image_decode_slots``: requests whose images are decoded at the same time.
    """

    model_name: str = "aki"
    default_max_tokens: int | None = None
    max_request_bytes: int | None = None
    image_dir: str | Path | None = None
    api_key: str | None = None
    max_concurrent_requests: int = 128
    image_decode_slots: int = 2


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``engine`` (the caller owns the engine and closes it)."""
    settings = settings or ServerSettings()
    limits = engine.limits
    max_body = settings.max_request_bytes or (limits.max_images * limits.max_image_bytes * 4 // 3 + 2**20)
    in_flight = _Slots(settings.max_concurrent_requests)
    decoding = asyncio.Semaphore(settings.image_decode_slots)
    app = FastAPI(title="aki", description="OpenAI-compatible chat completions for AKI", docs_url=None)
    authorized = Depends(_key_check(settings.api_key))

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse(error_body(str(error), status=error.status), status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, object]:
        load = {
            **engine.load,
            "in_flight": in_flight.taken,
            "generated_tokens": engine.stats.generated_tokens,
            "tokens_after_cancel": engine.stats.tokens_after_cancel,
        }
        return {"status": "ok", "model": settings.model_name, "mma": engine.default_mma, **load}

    @app.get("/v1/models", dependencies=[authorized])
    async def list_models() -> dict[str, object]:
        card = {"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "aki"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=[authorized])
    async def chat_completions(request: Request) -> Response:
        slot = in_flight.take()
        try:
            body = await _read_body(request, max_body)
            parsed = await run_in_threadpool(parse_request, body, limits)
            del body
            if parsed.model is not None and parsed.model != settings.model_name:
                raise InputError(
                    f"the model {parsed.model!r} does not exist; this server serves {settings.model_name!r}",
                    status=404,
                )
            params = parsed.sampling_params(default_max_tokens=settings.default_max_tokens)
            loop = asyncio.get_running_loop()
            async with decoding:  # decoded images live only inside this call
                generation = await run_in_threadpool(_submit, engine, parsed, params, settings, loop)
            # In flight until the answer is finished, also when a stream is never read.
            generation.add_done_callback(lambda: _call_soon(loop, slot.release))
            if parsed.stream:
                events = _events(generation, parsed, model=settings.model_name, id_=completion_id())
                return StreamingResponse(
                    events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            completion = await _result_unless_abandoned(request, generation)
        except BaseException:
            slot.release()
            raise
        slot.release()
        if completion is None:  # the client left: nobody reads this
            return Response(status_code=499)
        return completion_body(completion, model=settings.model_name, id_=completion_id())

    return app


class _Slots:
    """A count of requests in flight, refused with 429 above ``limit`` (the event loop's thread only)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrent_requests must be >= 1, got {limit}")
        self.limit = limit
        self.taken = 0

    def take(self) -> _Slot:
        if self.taken >= self.limit:
            raise InputError(
                f"the server is busy: {self.taken} requests in flight, the limit is {self.limit}; retry later",
                status=429,
            )
        self.taken += 1
        return _Slot(self)


class _Slot:
    """One request's place in :class:`_Slots`; releasing it twice releases it once."""

    def __init__(self, slots: _Slots) -> None:
        self.slots: _Slots | None = slots

    def release(self) -> None:
        if self.slots is not None:
            self.slots.taken -= 1
            self.slots = None


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """``callback`` on ``loop``'s thread, from another thread; nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that refuses requests without ``Authorization: Bearer <api_key>`` (none when no key)."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise InputError(
                "invalid or missing API key: send the header 'Authorization: Bearer <key>'", status=401
            )

    return check


def _submit(
    engine: Engine,
    request: ChatCompletionRequest,
    params: SamplingParams,
    settings: ServerSettings,
    loop: asyncio.AbstractEventLoop,
) -> Generation:
    """Decode the request's images and queue it (the decoded images are freed when this returns)."""
    messages = to_engine_messages(request.messages, engine.limits, image_dir=settings.image_dir)
    return engine.submit(messages, params, loop=loop, stream=request.stream)


async def _result_unless_abandoned(request: Request, generation: Generation) -> Completion | None:
    """The completion, or None when the client disconnects first (its generation is then cancelled: it
    stops within one decoding step). Generation failures raise :class:`InputError` with status 500.
    """
    result = asyncio.ensure_future(generation.aresult())
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            generation.cancel()
            result.cancel()
    if not result.done() or result.cancelled():
        return None
    if result.exception() is not None:
        error = result.exception()
        raise InputError(f"generation failed: {type(error).__name__}: {error}", status=500)
    return result.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone (after the body was read, the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InputError(
            f"the request body is {declared} bytes, above the limit of {limit} bytes", status=413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"the request body is above the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _events(
    generation: Generation, request: ChatCompletionRequest, *, model: str, id_: str
) -> AsyncIterator[bytes]:
    """Server-sent events: the role, each text piece, the finish reason, the usage if asked, then ``[DONE]``.

    A client that leaves ends this generator (Starlette cancels it), which cancels the generation.
    """
    try:
        yield sse(chunk_body(model=model, id_=id_, delta={"role": "assistant", "content": ""}))
        async for piece in generation.astream():
            yield sse(chunk_body(model=model, id_=id_, delta={"content": piece}))
        yield sse(chunk_body(model=model, id_=id_, delta={}, finish=generation.completion))
        if request.include_usage:
            yield sse(chunk_body(model=model, id_=id_, delta={}, usage_of=generation.completion))
    except Exception as error:
        yield sse(error_body(f"generation failed: {type(error).__name__}: {error}", status=500))
    finally:
        generation.cancel()
    yield sse("[DONE]")


def run_server(
    engine: Engine, settings: ServerSettings | None = None, *, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve until interrupted (uvicorn), then close the engine."""
    import uvicorn

    try:
        uvicorn.run(create_app(engine, settings), host=host, port=port, log_level="warning")
    finally:
        engine.close()


__all__ = ["ServerSettings", "create_app", "run_server"]
