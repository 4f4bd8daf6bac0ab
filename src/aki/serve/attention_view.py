"""What the image sees of the question: attention of each image token to each question word, MMA vs causal.

For the last image of a chat, the question span is the text after it that MMA lets the image attend to (up to
and including ``<|assistant|>``). One eager forward per mode with ``output_attentions=True`` gives the attention
weights, averaged over layers and heads; each word's weight is the sum over its tokens. With MMA the image rows
reach the later question words; with causal attention they cannot (their weights are exactly 0). Pictures are
drawn with matplotlib as PNG: these weights, and the MMA mask around the image and the question.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..generation import Message
from ..mma import Role, mma_mask
from ..viz import save_mask_png
from .engine import Engine

MAX_WORDS = 48  # columns of the picture; longer questions are cut


@dataclass(frozen=True)
class QuestionAttention:
    """Attention of the last image's tokens to the question words, for MMA and for causal attention."""

    words: list[str]  # (W,) question words after the image, in order
    weights: dict[str, torch.Tensor]  # "MMA" / "causal": (num_image_tokens, W)
    roles: torch.Tensor  # (L,) roles of the prompt
    labels: list[str]  # (L,) one short label per prompt token
    image_span: tuple[int, int]  # [start, stop) of the last image's tokens
    question_span: tuple[int, int]  # [start, stop) of the question tokens


def question_attention(engine: Engine, messages: list[Message]) -> QuestionAttention | None:
    """The view for the prompt that answers ``messages``; None when the chat holds no image."""
    inputs = engine.encode(messages)
    roles = inputs["mma_roles"][0]  # (L,)
    media = (roles == Role.MEDIA).nonzero().flatten().tolist()
    if not media:
        return None
    image_stop = media[-1] + 1
    image_start = image_stop - engine.model.config.num_latents
    question_stop = image_stop
    while question_stop < len(roles) and roles[question_stop] == Role.TEXT:
        question_stop += 1
    token_ids = inputs["input_ids"][0].tolist()
    pieces = _pieces(engine.processor.tokenizer, token_ids)
    words, groups = _words(pieces[image_stop:question_stop], token_ids[image_stop:question_stop], engine)
    words, groups = words[:MAX_WORDS], groups[:MAX_WORDS]

    weights = {}
    for name, mma in (("MMA", True), ("causal", False)):
        attention = _mean_attention(engine, inputs, mma=mma)  # (L, L)
        rows = attention[image_start:image_stop]  # (N, L)
        columns = [rows[:, [image_stop + k for k in group]].sum(-1) for group in groups]
        weights[name] = torch.stack(columns, -1) if columns else rows[:, :0]
    labels = [
        "img" if role == Role.MEDIA else _label(piece)
        for piece, role in zip(pieces, roles.tolist(), strict=True)
    ]
    return QuestionAttention(
        words=words,
        weights=weights,
        roles=roles,
        labels=labels,
        image_span=(image_start, image_stop),
        question_span=(image_stop, question_stop),
    )


def _mean_attention(engine: Engine, inputs: dict[str, torch.Tensor], *, mma: bool) -> torch.Tensor:
    """Attention weights ``(L, L)`` of one eager forward, averaged over layers and heads."""
    with engine.exclusive(mma=mma) as model, torch.inference_mode():
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")  # only eager attention returns its weights
        try:
            outputs = model(**inputs, output_attentions=True)
        finally:
            model.set_attn_implementation(previous)
    return torch.stack(outputs.attentions).float().mean((0, 2))[0]  # (layers, B, H, L, L) -> (L, L)


def _pieces(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """The text each token adds when the prompt is decoded left to right (right for any tokenizer)."""
    pieces, previous = [], ""
    for end in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:end])
        pieces.append(text[len(previous) :])
        previous = text
    return pieces


def _words(pieces: list[str], token_ids: list[int], engine: Engine) -> tuple[list[str], list[list[int]]]:
    """Group tokens into words: a piece starting with whitespace, or a special token, begins a new word."""
    special = set(engine.processor.tokenizer.all_special_ids)
    words: list[str] = []
    groups: list[list[int]] = []
    new_word = True
    for index, (piece, token) in enumerate(zip(pieces, token_ids, strict=True)):
        if not piece.strip():
            new_word = True
            continue
        if new_word or token in special or piece[0].isspace():
            words.append(piece.strip())
            groups.append([index])
        else:
            words[-1] += piece
            groups[-1].append(index)
        new_word = token in special
    return words, groups


def _label(piece: str) -> str:
    return piece.strip() or {" ": "␣", "\n": "⏎"}.get(piece, repr(piece))


def save_attention_png(view: QuestionAttention, path: str | Path) -> Path:
    """Heatmaps side by side, MMA and causal: image tokens (rows) x question words (columns), one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(view.weights)
    top = max(float(view.weights[name].max()) for name in names) if view.words else 1.0
    rows = view.image_span[1] - view.image_span[0]
    width = min(16.0, 3.0 + 0.35 * len(view.words)) * len(names)
    figure, axes = plt.subplots(
        1, len(names), figsize=(width, 2.0 + min(6.0, 0.25 * rows)), squeeze=False, layout="constrained"
    )
    for axis, name in zip(axes[0], names, strict=True):
        picture = axis.imshow(view.weights[name].numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=top)
        axis.set_xticks(range(len(view.words)), view.words, rotation=60, ha="right", fontsize=8)
        if rows <= 16:
            axis.set_yticks(range(rows))
        axis.set_title(f"{name}: image token → question word")
    axes[0][0].set_ylabel(f"image token (of {rows})")
    figure.colorbar(picture, ax=axes[0].tolist(), label="attention weight")
    figure.suptitle("attention of the image's tokens to the question's words (mean over layers and heads)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_prompt_mask_png(view: QuestionAttention, path: str | Path, *, context: int = 2) -> Path:
    """The MMA mask of the prompt around the last image and its question (``context`` tokens either side)."""
    start = max(0, view.image_span[0] - context)
    stop = min(len(view.roles), view.question_span[1] + context)
    roles = view.roles[start:stop]
    allowed = mma_mask(view.roles[None])[0, 0, start:stop, start:stop]  # (l, l)
    title = f"MMA mask, prompt tokens {start}..{stop - 1}"
    return save_mask_png(allowed, roles, path, title=title, tokens=view.labels[start:stop])


__all__ = ["QuestionAttention", "question_attention", "save_attention_png", "save_prompt_mask_png"]
