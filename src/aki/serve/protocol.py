"""The OpenAI chat-completions wire format: request parsing into engine inputs, and response bodies.

Parsing is strict where a mistake would change the answer (unknown roles and part types, ``n`` > 1, values out
of range, ``true`` where a number belongs) and lenient where OpenAI clients send extra fields (unknown top-level
keys are ignored). Sizes are checked before any work: the chat's parts, images and characters on the raw JSON
(:meth:`~aki.serve.engine.Limits.check_chat`), every image's bytes and header size, and the pixels of all
images together, before one pixel is decoded. Every problem becomes an :class:`~aki.generation.InputError`
whose message names the field.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..generation import Completion, InputError, Message, SamplingParams
from .engine import Limits
from .images import data_url_bytes, decode_image, image_file_bytes, image_pixels

Count = Annotated[int, Field(strict=True, ge=1)]  # strict: JSON true is no count
Number = Annotated[float, Field(strict=True)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageUrl(_Part):
    url: str
    detail: str | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]


class ChatCompletionRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` that this server reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] | None = None
    stop: str | list[str] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: dict[str, Any] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=1)] = 1

    def sampling_params(self, *, default_max_tokens: int | None = None) -> SamplingParams:
        """Greedy unless ``temperature`` > 0 (an omitted temperature is greedy, so answers are reproducible).

        Without ``max_tokens``, ``default_max_tokens``; None leaves it to the engine: what is left of the
        model's context, within the server's limit (as vLLM does).
        """
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise InputError(f"stop has {len(stop)} strings; at most 4 are allowed")
        return SamplingParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature or 0.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(stop),
        )

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def parse_request(body: bytes, limits: Limits | None = None) -> ChatCompletionRequest:
    """The request of a raw JSON body; :class:`InputError` naming the problem when it is not one, or when its
    chat is larger than ``limits`` allow (checked before the request model is built).
    """
    most = (
        None if limits is None else 2 * limits.max_parts + 16
    )  # messages, parts, image_url objects, options
    try:
        data = json.loads(body, object_hook=_ObjectCounter(most))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"the request body is not valid JSON: {error}") from error
    except RecursionError:
        raise InputError("the request body is JSON nested too deeply") from None
    except _TooManyObjects:
        raise InputError(
            f"the request body has more than {most} JSON objects; a chat may have at most {limits.max_parts} "
            "messages and parts"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"the request body must be a JSON object, got {type(data).__name__}")
    if limits is not None:
        limits.check_chat(data.get("messages"))
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]
        ]
        raise InputError("invalid request: " + "; ".join(problems)) from error


class _TooManyObjects(Exception):
    pass


class _ObjectCounter:
    """A ``json.loads`` object hook that stops the parse at the ``most + 1``-th object (None: never)."""

    def __init__(self, most: int | None) -> None:
        self.most, self.seen = most, 0

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        self.seen += 1
        if self.most is not None and self.seen > self.most:
            raise _TooManyObjects
        return item


def to_engine_messages(
    messages: list[ChatMessage], limits: Limits, *, image_dir: str | Path | None = None
) -> list[Message]:
    """AKI messages with decoded images: data URLs always, local files (``file://`` or a path, relative to
    ``image_dir``) only inside ``image_dir``; remote URLs are refused (this server fetches nothing).

    Every image's bytes and header size are checked first, then the pixels of all of them together against
    ``limits.max_request_pixels``; only then is any image decoded.
    """
    images = {}  # (message, part) -> (encoded bytes, name)
    for index, message in enumerate(messages):
        for part_index, part in enumerate(message.content if isinstance(message.content, list) else []):
            if isinstance(part, ImagePart):
                name = f"messages[{index}].content[{part_index}].image_url"
                images[index, part_index] = _image_bytes(part.image_url.url, limits, image_dir, name)
    if len(images) > limits.max_images:
        raise InputError(f"the chat has {len(images)} images, above the limit of {limits.max_images}")
    pixels = sum(image_pixels(data, limits, name=name) for data, name in images.values())
    if pixels > limits.max_request_pixels:
        raise InputError(
            f"the images of the chat have {pixels} pixels together, above the limit of "
            f"{limits.max_request_pixels} pixels",
            status=413,
        )
    converted = []
    for index, message in enumerate(messages):
        if isinstance(message.content, str):
            converted.append({"role": message.role, "content": message.content})
            continue
        items: list[dict[str, Any]] = []
        for part_index, part in enumerate(message.content):
            if isinstance(part, TextPart):
                items.append({"type": "text", "text": part.text})
            else:
                data, name = images.pop((index, part_index))
                items.append({"type": "image", "image": decode_image(data, limits, name=name)})
        converted.append({"role": message.role, "content": items})
    return converted


def _image_bytes(url: str, limits: Limits, image_dir: str | Path | None, name: str) -> tuple[bytes, str]:
    if url.startswith("data:"):
        return data_url_bytes(url, limits, name=name), name
    if url.startswith(("http://", "https://")):
        raise InputError(f"{name} is a remote URL; this server fetches nothing: send the image as a data URL")
    if image_dir is None:
        raise InputError(
            f"{name} is a local file; local image files are disabled (start the server with --image-dir DIR)",
            status=403,
        )
    return image_file_bytes(url.removeprefix("file://"), limits, root=image_dir)


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def completion_body(completion: Completion, *, model: str, id_: str) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": usage(completion),
    }


def chunk_body(
    *,
    model: str,
    id_: str,
    delta: dict[str, str],
    finish: Completion | None = None,
    usage_of: Completion | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object: a text delta, the final one with its finish reason, or the usage."""
    body: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    if usage_of is not None:
        body["choices"], body["usage"] = [], usage(usage_of)
    else:
        reason = None if finish is None else _finish_reason(finish)
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": reason}]
    return body


def error_body(message: str, *, status: int) -> dict[str, Any]:
    """OpenAI's error object (the ``openai`` client shows ``message``)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


__all__ = [
    "ChatCompletionRequest",
    "chunk_body",
    "completion_body",
    "completion_id",
    "error_body",
    "parse_request",
    "sse",
    "to_engine_messages",
]
