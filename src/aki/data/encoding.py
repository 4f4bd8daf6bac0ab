"""Raw samples -> token ids, labels and MMA roles from one template pass, and batches of them.

Pre-training samples are ``<image>{caption}<|endofchunk|>`` (after the tokenizer's ``<s>``); with
``order="text_first"`` the image follows the caption. Fine-tuning samples are LLaVA conversations rendered
with :class:`~aki.models.aki.AkiProcessor`'s chat template; the template marks the answers (and their end
token) as generation, which gives the labels, and the processor's :meth:`~AkiProcessor.roles` gives the roles
of the same token ids. Every labelled position must be RESPONSE (checked for every sample): a label on a
position that media tokens may see would train on text the image has already read. No label may be the
tokenizer's unknown token: a sample whose answer holds a word the tokenizer does not know is a bad sample
(skipped and counted, or an error), never trained as ``<unk>``.

Example:
    >>> encoder = ChatEncoder(processor, max_length=512)  # doctest: +SKIP
    >>> encoded = encoder.encode(raw_sample)  # doctest: +SKIP
    >>> batch = collate([encoded], processor=processor)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..mma import IGNORE_INDEX, Role
from ..models.aki.builders import unknown_pieces
from .augment import flip_images, flip_text
from .config import Order
from .sources import BadSample, RawSample, load_image

END_OF_CHUNK = "<|endofchunk|>"

_SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_IMAGE_SPLIT = re.compile(r"(<image>)")
ANSWER_SPEAKERS = ("gpt", "assistant")


@dataclass(frozen=True)
class Encoded:
    """One sample ready to batch: ``input_ids``, ``labels`` and ``roles`` of equal length, and its images."""

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    roles: list[int]
    images: list[Image.Image]


class _Encoder:
    """What both encoders share: image loading, flipping, placeholder expansion and the final checks."""

    def __init__(
        self,
        processor: Any,
        *,
        max_length: int,
        order: Order = "image_first",
        max_image_pixels: int | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.order = order
        self.max_image_pixels = max_image_pixels
        self.image_token_id = processor.image_token_id
        size = getattr(processor.image_processor, "size", None) or {}
        self.image_size = (size.get("width"), size.get("height"))  # what the vision tower takes, in pixels
        self._resize_said = False

    def _images(self, raw: RawSample, flip: bool) -> list[Image.Image]:
        if raw.problem is not None:
            raise BadSample(raw.id, raw.problem)
        images = [load_image(reference, raw.id, max_pixels=self.max_image_pixels) for reference in raw.images]
        self._say_resize_once(raw, images)
        return flip_images(images) if flip else images

    def _say_resize_once(self, raw: RawSample, images: list[Image.Image]) -> None:
        """Warn (once per encoder) that images of another size than the vision tower's are resized to it."""
        other = next((image for image in images if image.size != self.image_size), None)
        if other is None or self._resize_said or None in self.image_size:
            return
        self._resize_said = True
        width, height = self.image_size
        warnings.warn(
            f"images are resized to {width} x {height} px, the vision tower's input (the first other size: "
            f"{other.width} x {other.height} px, sample {raw.id!r}); this is said once",
            stacklevel=3,
        )

    def _finish(
        self, raw: RawSample, token_ids: list[int], labelled: list[bool], images: list[Image.Image]
    ) -> Encoded:
        """Expand each ``<image>`` to its placeholders, derive roles, and check counts, labels and length."""
        found = token_ids.count(self.image_token_id)
        if found != len(images):
            raise BadSample(
                raw.id, f"the text has {found} <image> placeholders but the sample has {len(images)} images"
            )
        input_ids, labels = self.processor.expand(
            token_ids,
            [t if is_labelled else IGNORE_INDEX for t, is_labelled in zip(token_ids, labelled, strict=True)],
        )
        if len(input_ids) > self.max_length:
            raise BadSample(
                raw.id, f"{len(input_ids)} tokens (images expanded) exceed max_length={self.max_length}"
            )
        roles = self.processor.roles(input_ids)
        wrong = [
            i
            for i, (label, role) in enumerate(zip(labels, roles, strict=True))
            if label != IGNORE_INDEX and role != Role.RESPONSE
        ]
        if wrong:
            raise BadSample(
                raw.id,
                f"labelled positions {wrong[:8]} are not RESPONSE (does the text hold template tokens?)",
            )
        if all(label == IGNORE_INDEX for label in labels):
            raise BadSample(raw.id, "no labelled token: nothing to train on")
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in labels:
            words = sorted(
                {piece for pieces in unknown_pieces(self.tokenizer, answer_texts(raw)) for piece in pieces}
            )
            raise BadSample(
                raw.id,
                f"its answer holds words the tokenizer does not know ({', '.join(map(repr, words)) or '<unk>'}), "
                "which would be trained as <unk>: set model.extend_vocabulary=true to add them",
            )
        return Encoded(raw.id, input_ids, labels, roles, images)


class CaptionEncoder(_Encoder):
    """Pre-training: ``<s><image>{caption}<|endofchunk|>``; the caption and ``<|endofchunk|>`` are labelled.

    There is no ``<|assistant|>`` header, so every text token is RESPONSE: MMA leaves the mask causal and no
    caption leaks into the image.
    """

    def encode(self, raw: RawSample, *, flip: bool = False) -> Encoded:
        images = self._images(raw, flip)
        if raw.caption is None:
            raise BadSample(raw.id, "a pre-training sample needs a caption")
        caption = flip_text(raw.caption, image_width=images[0].width) if flip and images else raw.caption
        image_text = "<image>" * len(images)
        body = caption + image_text if self.order == "text_first" else image_text + caption
        bos = self.tokenizer.bos_token or ""
        token_ids = self.tokenizer(bos + body + END_OF_CHUNK, add_special_tokens=False)["input_ids"]
        labelled = [not (i == 0 and bos) for i in range(len(token_ids))]
        return self._finish(raw, token_ids, labelled, images)


class ChatEncoder(_Encoder):
    """Fine-tuning: a LLaVA conversation through the AKI chat template; the answers (with their end token) are
    labelled, the prompt is not.

    Images go where their ``<image>`` marks are (``order="as_is"``), or first / last within their user turn.
    """

    def encode(self, raw: RawSample, *, flip: bool = False) -> Encoded:
        images = self._images(raw, flip)
        if raw.conversations is None:
            raise BadSample(raw.id, "a fine-tuning sample needs 'conversations'")
        width = images[0].width if images else 1
        messages = [self._message(raw, turn, flip=flip, image_width=width) for turn in raw.conversations]
        return self.encode_chat(raw, messages, images)

    def encode_chat(
        self, raw: RawSample, messages: list[dict[str, Any]], images: list[Image.Image]
    ) -> Encoded:
        """A chat of Hugging Face messages (image items ``{"type": "image"}``) and its decoded images."""
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.processor.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
        except Exception as error:  # jinja's raise_exception and template errors: this sample's fault
            raise BadSample(raw.id, f"the chat template failed: {error}") from None
        labelled = [bool(flag) for flag in rendered["assistant_masks"]]
        return self._finish(raw, list(rendered["input_ids"]), labelled, images)

    def _message(
        self, raw: RawSample, turn: dict[str, str], *, flip: bool, image_width: int
    ) -> dict[str, Any]:
        if not isinstance(turn["value"], str):
            raise BadSample(raw.id, f"a turn's 'value' must be a string, got {type(turn['value']).__name__}")
        text = flip_text(turn["value"], image_width=image_width) if flip else turn["value"]
        try:
            return chat_message(turn["from"], text, order=self.order)
        except ValueError as error:
            raise BadSample(raw.id, str(error)) from None


def chat_message(speaker: str, text: str, *, order: Order) -> dict[str, Any]:
    """One LLaVA turn (``"from"`` and ``"value"``) as a Hugging Face chat message, as training renders it: the
    speaker's role, the text cut at its ``<image>`` marks into image and text items (each text stripped), the
    images moved first or last within the turn unless ``order`` is ``as_is``. Evaluation builds its prompts
    with it too, so that a question is asked exactly as the model was trained on it.

    Example:
        >>> chat_message("human", "what is it?\\n<image>", order="image_first")
        {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'what is it?'}]}
    """
    role = _SPEAKERS.get(speaker)
    if role is None:
        raise ValueError(f"unknown speaker {speaker!r}; expected one of {sorted(_SPEAKERS)}")
    items = [
        {"type": "image"} if piece == "<image>" else {"type": "text", "text": piece.strip()}
        for piece in _IMAGE_SPLIT.split(text)
        if piece.strip()
    ]
    if role != "user" and any(item["type"] == "image" for item in items):
        raise ValueError(f"a {speaker!r} turn holds <image>: images belong to user turns")
    if order != "as_is":
        first = "image" if order == "image_first" else "text"
        items.sort(key=lambda item: item["type"] != first)  # stable: keeps the order within each kind
    return {"role": role, "content": items}


def answer_texts(raw: RawSample) -> list[str]:
    """What a sample trains the model to say: its caption, or the values of its assistant turns."""
    if raw.conversations is None:
        return [] if raw.caption is None else [raw.caption]
    return [turn["value"] for turn in raw.conversations if _is_answer(turn)]


def prompt_texts(raw: RawSample) -> list[str]:
    """The rest of a sample's text: the values of its user and system turns."""
    turns = raw.conversations or ()
    return [turn["value"] for turn in turns if not _is_answer(turn) and isinstance(turn.get("value"), str)]


def _is_answer(turn: dict[str, Any]) -> bool:
    return turn.get("from") in ANSWER_SPEAKERS and isinstance(turn.get("value"), str)


class ChatCollator:
    """A data collator for trainers that hand it dataset rows of Hugging Face chats (TRL's vision format):
    ``{"messages": [...], "images": [...]}`` -> :func:`collate` of :meth:`ChatEncoder.encode_chat`: the AKI
    template's tokens, labels on the answers only and the MMA roles of the same pass.

    Example:
        >>> SFTTrainer(model=aki_model, data_collator=ChatCollator(processor), ...)  # doctest: +SKIP
    """

    def __init__(self, processor: Any, *, max_length: int = 4096) -> None:
        self.encoder = ChatEncoder(processor, max_length=max_length, order="as_is")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = []
        for index, row in enumerate(rows):
            raw = RawSample(str(row.get("id", index)), tuple(row.get("images") or ()))
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            encoded.append(self.encoder.encode_chat(raw, messages, self.encoder._images(raw, False)))
        return collate(encoded, processor=self.encoder.processor)


def collate(samples: list[Encoded], *, processor: Any) -> dict[str, torch.Tensor]:
    """Right-pad encoded samples into a batch (:meth:`AkiProcessor.pad`): ``input_ids``, ``attention_mask``,
    ``mma_roles``, ``labels`` ``(B, L)`` and ``pixel_values`` ``(N, 3, H, W)`` (images in placeholder order;
    absent without images).
    """
    features = [{"input_ids": s.input_ids, "mma_roles": s.roles, "labels": s.labels} for s in samples]
    batch = processor.pad(features, padding_side="right")
    images = [image for sample in samples for image in sample.images]
    if images:
        batch["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return batch


__all__ = [
    "CaptionEncoder",
    "ChatCollator",
    "ChatEncoder",
    "Encoded",
    "answer_texts",
    "chat_message",
    "collate",
    "prompt_texts",
]
