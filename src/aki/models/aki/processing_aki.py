"""AkiProcessor: chat template, image placeholders and MMA roles in one Hugging Face processor.

Every ``<image>`` in the text becomes ``num_image_tokens`` placeholder tokens, and every token gets an MMA
role (:class:`aki.mma.Role`): placeholders are MEDIA; in a sequence with an ``<|assistant|>`` header,
everything after a header up to the next ``<|user|>`` / ``<|system|>`` header is RESPONSE and the rest
(system, user turns, the headers themselves) is TEXT. So media see their prompt through ``<|assistant|>``
and not the newline after it, exactly as the released AKI was trained, never an earlier or later answer,
and whatever is generated is RESPONSE too. A sequence without ``<|assistant|>`` (a pre-training caption)
is RESPONSE throughout: plain causal attention, as in the reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

from ...io import check_decodes, open_image
from ...mma import IGNORE_INDEX, Role, roles_from_token_ids
from .image_processing_aki import AkiImageProcessor

# What each padded feature is filled with (input_ids: the tokenizer's pad id).
PAD_FILLS = {"input_ids": None, "attention_mask": 0, "mma_roles": int(Role.TEXT), "labels": IGNORE_INDEX}
CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text()
# What the template says as the system turn when a chat has none (the released AKI's).
CHAT_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def chat_template(system_message: str = CHAT_SYSTEM_MESSAGE) -> str:
    """AKI's chat template whose default system turn (used when a chat has no system message) is
    ``system_message``: a small model trained on its own data can keep its prompts short.

    Example:
        >>> "Answer in one word." in chat_template("Answer in one word.")
        True
    """
    if any(character in system_message for character in '"\\{}%'):
        raise ValueError(
            f"a default system message cannot hold quotes, backslashes, braces or percent signs: {system_message!r}"
        )
    literal = f'"{CHAT_SYSTEM_MESSAGE}"'
    if CHAT_TEMPLATE.count(literal) != 1:  # the template file and the constant must agree
        raise RuntimeError("chat_template.jinja does not hold CHAT_SYSTEM_MESSAGE as its default system turn")
    return CHAT_TEMPLATE.replace(literal, f'"{system_message}"')


class AkiProcessor(ProcessorMixin):
    """Tokenizer + :class:`AkiImageProcessor` + the AKI chat template; batches are left-padded.

    Returns ``input_ids``, ``attention_mask``, ``mma_roles`` (LongTensor ``[B, L]``: 0 TEXT, 1 MEDIA,
    2 RESPONSE) and, with images, ``pixel_values`` ``(N, 3, H, W)`` in placeholder order.

    Example:
        >>> processor = AkiProcessor(image_processor, tokenizer, num_image_tokens=144)  # doctest: +SKIP
        >>> chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
        >>> prompt = processor.apply_chat_template(chat, add_generation_prompt=True)  # doctest: +SKIP
        >>> batch = processor(images=[image], text=prompt)  # doctest: +SKIP
        >>> model.generate(**batch, max_new_tokens=32)  # doctest: +SKIP
    """

    model_input_names = ["input_ids", "attention_mask", "mma_roles", "pixel_values"]

    # Positional-or-keyword on purpose: ProcessorMixin reloads only those from processor_config.json.
    def __init__(
        self,
        image_processor: AkiImageProcessor | None = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        num_image_tokens: int = 144,
        image_token: str = "<image>",
        assistant_token: str = "<|assistant|>",
        turn_tokens: Sequence[str] = ("<|user|>", "<|system|>"),
        padding_side: str = "left",
    ) -> None:
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.assistant_token = assistant_token
        self.turn_tokens = list(turn_tokens)
        self.padding_side = padding_side
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        vocab = self.tokenizer.get_vocab()
        if image_token not in vocab:
            raise ValueError(f"the tokenizer has no {image_token!r} token: add it as a special token first")
        if assistant_token not in vocab:
            raise ValueError(
                f"the tokenizer has no {assistant_token!r} token: add it as a special token first (the MMA "
                "roles need the assistant header as one token)"
            )
        self.image_token_id = vocab[image_token]
        self.assistant_token_id = vocab[assistant_token]
        self.turn_token_ids = {vocab[token] for token in self.turn_tokens if token in vocab}

    @classmethod
    def for_model(cls, config: PreTrainedConfig, tokenizer: Any, **kwargs) -> AkiProcessor:
        """The processor matching an :class:`AkiConfig`: image size from the vision tower, one placeholder per latent."""
        size = config.vision_config.image_size
        image_processor = AkiImageProcessor(size={"height": size, "width": size})
        return cls(image_processor, tokenizer, num_image_tokens=config.num_latents, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        *,
        max_length: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = False,
        return_tensors: str | None = "pt",
        images_kwargs: dict | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize ``text`` (the chat template already writes ``<s>``, hence ``add_special_tokens=False``),
        expand each ``<image>`` and compute the MMA roles.

        ``images``: one image, a flat list (taken in placeholder order across the batch) or one list per
        text; PIL images, arrays, tensors or file paths. ``max_length`` truncates text on the right and raises
        if the cut would fall inside (or after) an image's tokens.
        """
        if videos is not None or audio is not None:
            raise ValueError("AKI takes images and text only, got videos or audio")
        if kwargs:
            raise TypeError(f"AkiProcessor got unexpected keyword arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError("AkiProcessor needs text: put one <image> in it per image")
        texts = [text] if isinstance(text, str) else list(text)
        token_ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        placeholders = [ids.count(self.image_token_id) for ids in token_ids]
        images_per_text = self._assign_images(images, placeholders)

        sequences = [self.expand(ids) for ids in token_ids]
        if max_length is not None:
            sequences = [self._truncate(ids, max_length, i) for i, ids in enumerate(sequences)]
        features = [{"input_ids": ids, "mma_roles": self.roles(ids)} for ids in sequences]
        data = self.pad(features, padding_side=padding_side)

        flat_images = [image for group in images_per_text for image in group]
        if flat_images:
            pixels = self.image_processor(flat_images, return_tensors="pt", **(images_kwargs or {}))
            data["pixel_values"] = pixels["pixel_values"]
        if return_tensors is None:
            data = {key: value.tolist() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def pad(
        self, features: Sequence[Mapping[str, Any]], *, padding_side: str | None = None
    ) -> dict[str, torch.Tensor]:
        """One batch from per-sample features: the one padder of aki (processor, data collator, generation).

        Each feature holds ``input_ids`` and any of ``attention_mask`` (default: all ones), ``mma_roles`` and
        ``labels``, as lists of ints or ``(1, L)`` tensors, and optionally ``pixel_values`` ``(N, 3, H, W)``.
        Sequences are padded to the longest on ``padding_side`` (default: the processor's) with the pad id,
        attention 0, role TEXT and label -100; ``pixel_values`` are concatenated in sample order, which is
        placeholder order.
        """
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        rows = [{key: _as_ids(value) for key, value in f.items() if key in PAD_FILLS} for f in features]
        length = max(len(row["input_ids"]) for row in rows)
        if self.tokenizer.pad_token_id is None and any(len(row["input_ids"]) < length for row in rows):
            raise ValueError("the texts have different lengths but the tokenizer has no pad token")
        fills = {**PAD_FILLS, "input_ids": self.tokenizer.pad_token_id}
        keys = ["input_ids", "attention_mask", *(key for key in ("mma_roles", "labels") if key in rows[0])]
        batch = {}
        for key in keys:
            padded = []
            for row in rows:
                values = row.get(key, [1] * len(row["input_ids"]) if key == "attention_mask" else None)
                if values is None or len(values) != len(row["input_ids"]):
                    raise ValueError(f"every feature needs {key!r} as long as its input_ids")
                gap = [fills[key]] * (length - len(values))
                padded.append(gap + values if side == "left" else values + gap)
            batch[key] = torch.tensor(padded, dtype=torch.long)  # (B, L)
        pixels = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)  # (N, 3, H, W)
        return batch

    def roles(self, token_ids: Sequence[int]) -> list[int]:
        """The MMA role of every token of one expanded sequence (:func:`aki.mma.roles_from_token_ids`)."""
        return self.roles_of(torch.tensor([list(token_ids)], dtype=torch.long))[0].tolist()

    def roles_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Roles ``[B, L]`` of a batch of expanded token ids, by the template rule of the module docstring."""
        return roles_from_token_ids(
            input_ids,
            self.image_token_id,
            response_start_ids=self.assistant_token_id,
            turn_start_ids=sorted(self.turn_token_ids),
            attention_mask=attention_mask,
        )

    # ----------------------------------------------------------------------------------------------

    def _assign_images(self, images: Any, placeholders: list[int]) -> list[list[Any]]:
        """One list of decoded images per text, checked against the ``<image>`` count of each text."""
        total = sum(placeholders)
        if images is None:
            if total:
                raise ValueError(
                    f"the text has {total} <image> placeholders (per text: {placeholders}) but no images were given"
                )
            return [[] for _ in placeholders]
        nested = _is_list(images) and len(images) > 0 and all(_is_list(group) for group in images)
        if nested:
            if len(images) != len(placeholders):
                raise ValueError(f"got {len(images)} lists of images for {len(placeholders)} texts")
            for i, (group, count) in enumerate(zip(images, placeholders, strict=True)):
                if len(group) != count:
                    raise ValueError(
                        f"text {i} has {count} <image> placeholders but {len(group)} images were given for it"
                    )
            groups = [list(group) for group in images]
        else:
            flat = list(images) if _is_list(images) else [images]
            if len(flat) != total:
                where = "no <image> placeholder" if total == 0 else f"{total} <image> placeholders"
                raise ValueError(
                    f"{len(flat)} images were given but the text has {where} (per text: {placeholders})"
                )
            starts = np.cumsum([0, *placeholders])
            groups = [flat[start:stop] for start, stop in itertools.pairwise(starts)]
        return [
            [_decode(image, f"image {j} of text {i}") for j, image in enumerate(group)]
            for i, group in enumerate(groups)
        ]

    def expand(self, token_ids: Sequence[int], labels: Sequence[int] | None = None):
        """Each ``<image>`` token repeated ``num_image_tokens`` times (the positions its image fills).

        With ``labels`` (aligned with ``token_ids``), returns ``(input_ids, labels)``; an image's positions are
        never labelled.
        """
        copies = [self.num_image_tokens if token == self.image_token_id else 1 for token in token_ids]
        expanded = [token for token, n in zip(token_ids, copies, strict=True) for _ in range(n)]
        if labels is None:
            return expanded
        image = self.image_token_id
        label_of = [IGNORE_INDEX if t == image else label for t, label in zip(token_ids, labels, strict=True)]
        return expanded, [label for label, n in zip(label_of, copies, strict=True) for _ in range(n)]

    def _truncate(self, token_ids: list[int], max_length: int, index: int) -> list[int]:
        if len(token_ids) <= max_length:
            return token_ids
        media = [i for i, token in enumerate(token_ids) if token == self.image_token_id]
        cut_media = [i for i in media if i >= max_length]
        if cut_media:
            image = media.index(cut_media[0]) // self.num_image_tokens
            start = media[image * self.num_image_tokens]
            stop = start + self.num_image_tokens - 1
            raise ValueError(
                f"max_length={max_length} would cut text {index} (length {len(token_ids)}) through the tokens of "
                f"image {image} (positions {start}..{stop}); raise max_length to at least {media[-1] + 1}"
            )
        return token_ids[:max_length]


def _as_ids(value: Any) -> Any:
    """A ``(1, L)`` tensor as a list of ints; lists (and pixel tensors, untouched by the caller) as given."""
    return value[0].tolist() if isinstance(value, torch.Tensor) else list(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _decode(image: Any, name: str) -> Any:
    """Open paths and decode PIL images now, so that a bad file is reported with its place in the batch."""
    try:
        if isinstance(image, (str, Path)):
            return open_image(image)
        if isinstance(image, Image.Image):
            return check_decodes(image)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} is a {type(image).__name__}; give a PIL image, an array, a tensor or a path")
    return image


__all__ = ["CHAT_SYSTEM_MESSAGE", "CHAT_TEMPLATE", "AkiProcessor", "chat_template"]
