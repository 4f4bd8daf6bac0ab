"""``aki serve``: an OpenAI-compatible ``POST /v1/chat/completions`` (FastAPI) on the batching :class:`Engine`.

Concurrent requests meet in the engine, which answers them in shared batches. A request that breaks a rule
(malformed JSON, bad base64, a file that is no image, a body, image or prompt above the limits) gets a 4xx with
an OpenAI error object naming the problem; nothing a client sends stops the server. Also ``GET /v1/models``
and ``GET /health``.

Example:
    >>> app = create_app(Engine.from_pretrained("outputs/quickstart/mma"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..generation import InputError
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

    ``max_request_bytes`` defaults to room for the engine's ``max_images`` images as base64 plus 1 MiB of text;
    ``image_dir`` enables ``image_url`` parts that name local files inside it (off by default).
    """

    model_name: str = "aki"
    default_max_tokens: int = 256
    max_request_bytes: int | None = None
    image_dir: str | Path | None = None


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``engine`` (the caller owns the engine and closes it)."""
    settings = settings or ServerSettings()
    limits = engine.limits
    max_body = settings.max_request_bytes or (limits.max_images * limits.max_image_bytes * 4 // 3 + 2**20)
    default_max_tokens = min(settings.default_max_tokens, limits.max_new_tokens)
    app = FastAPI(title="aki", description="OpenAI-compatible chat completions for AKI", docs_url=None)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse(error_body(str(error), status=error.status), status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "model": settings.model_name, "mma": engine.default_mma}

    @app.get("/v1/models")
    async def list_models() -> dict[str, object]:
        card = {"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "aki"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, max_body)
        parsed = parse_request(body)
        params = parsed.sampling_params(default_max_tokens=default_max_tokens)
        messages = await run_in_threadpool(
            to_engine_messages, parsed.messages, limits, image_dir=settings.image_dir
        )
        loop = asyncio.get_running_loop()
        generation = await run_in_threadpool(engine.submit, messages, params, loop=loop, stream=parsed.stream)
        id_ = completion_id()
        if parsed.stream:
            return StreamingResponse(
                _events(generation, parsed, model=settings.model_name, id_=id_),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            completion = await generation.aresult()
        except Exception as error:
            message = f"generation failed: {type(error).__name__}: {error}"
            return JSONResponse(error_body(message, status=500), status_code=500)
        finally:
            generation.cancel()  # a no-op when finished; frees the batch row when the client went away
        return completion_body(completion, model=settings.model_name, id_=id_)

    return app


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
    """Server-sent events: the role, each text piece, the finish reason, the usage if asked, then ``[DONE]``."""
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
