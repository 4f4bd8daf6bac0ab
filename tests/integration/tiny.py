"""Tiny random models of every family ``enable_mma`` is specified for, their inputs, and a dense reference.

Every model is fp32, 2 layers, hidden size 32, vocabulary 96, built from a deep copy of its config (a model
built with ``_from_config`` keeps the config object itself, so two models sharing one would switch each
other's attention) with the same seed, so models of one family share their weights.

The reference reads the rule of ``docs/mma.md`` literally, with Python loops: it is independent of
``aki.mma`` and of the registered implementations, and it runs through the *plain* eager model with prepared
4D additive masks (one per layer type, so sliding-window layers get ``window AND (causal OR MMA)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    AttentionInterface,
    CLIPVisionConfig,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from aki.integration import enable_mma
from aki.mma import Role, parse_layout

VOCAB = 96
PAD, BOS, EOS = 0, 1, 2
IMAGE_TOKEN = 3  # image placeholder of the VLMs
FIRST_TEXT_TOKEN = 8  # random text ids are drawn from [FIRST_TEXT_TOKEN, VOCAB): never special
WINDOW = 4  # sliding window of Mistral and of Gemma3's sliding layers: shorter than every prompt used
IMAGE_TOKENS = 4  # language-model positions per image, in both VLMs
# "causal_stand_in" is a FlashAttention stand-in (below): MMA runs on it by the split, as on any causal kernel.
IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "causal_stand_in")

_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
)


def _llava_config() -> LlavaConfig:
    # 8x8 images in 4x4 patches: 4 patch features (+ CLS, dropped by the "default" strategy).
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_TEXT),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1,
        pad_token_id=PAD,
    )


def _qwen2_vl_config() -> Qwen2VLConfig:
    # A 4x4 patch grid merged 2x2: 4 language-model positions per image. Head dim 8 -> mrope over 4 pairs.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    vision = dict(
        depth=1,
        embed_dim=16,
        hidden_size=32,
        num_heads=2,
        mlp_ratio=2,
        in_channels=3,
        patch_size=2,
        temporal_patch_size=2,
        spatial_merge_size=2,
    )
    return Qwen2VLConfig(
        text_config=dict(**_TEXT, rope_parameters=rope),
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        video_token_id=4,
        vision_start_token_id=5,
        vision_end_token_id=6,
    )


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type[PreTrainedModel]
    config: Callable[[], object]
    is_vlm: bool = False


FAMILIES = {
    family.name: family
    for family in (
        Family("llama", LlamaForCausalLM, lambda: LlamaConfig(**_TEXT)),
        Family("phi3", Phi3ForCausalLM, lambda: Phi3Config(**_TEXT)),
        Family("qwen2", Qwen2ForCausalLM, lambda: Qwen2Config(**_TEXT)),
        Family("mistral", MistralForCausalLM, lambda: MistralConfig(**_TEXT, sliding_window=WINDOW)),
        Family(
            "gemma3",
            Gemma3ForCausalLM,
            lambda: Gemma3TextConfig(
                **_TEXT,
                head_dim=8,
                query_pre_attn_scalar=8,
                sliding_window=WINDOW,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        Family("llava", LlavaForConditionalGeneration, _llava_config, is_vlm=True),
        Family("qwen2_vl", Qwen2VLForConditionalGeneration, _qwen2_vl_config, is_vlm=True),
    )
}
VLM_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.is_vlm)
SLIDING_FAMILIES = ("mistral", "gemma3")


def text_config(model: PreTrainedModel):
    return model.config.get_text_config(decoder=True)


def build(name: str, implementation: str = "sdpa", *, mma: bool = False) -> PreTrainedModel:
    """A fresh eval-mode model of family ``name`` (same weights every call) on ``implementation``.

    Only the language model's implementation is set: vision towers stay on sdpa, as ``enable_mma`` leaves them.
    """
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.model_class(copy.deepcopy(family.config())).eval()
    if mma:
        return enable_mma(model, attn_implementation=implementation)
    text_config(model)._attn_implementation = implementation
    return model


# --------------------------------------------------------------------------------------------------
# A stand-in for FlashAttention on the CPU
# --------------------------------------------------------------------------------------------------


def causal_stand_in(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs
):
    """What FlashAttention computes, in plain torch: causal attention within a window, over the keys a 2D padding
    mask keeps, packed sequences (position ids restarting, no mask) kept apart, and nothing else: any other
    mask (MMA's) is ignored, as the real kernels ignore it. It gets the masks transformers gives flash kernels.
    """
    batch, heads, q_length, _ = query.shape
    kv_length = key.shape[2]
    q_positions = torch.arange(kv_length - q_length, kv_length)[:, None]
    k_positions = torch.arange(kv_length)[None, :]
    allowed = k_positions <= q_positions  # (Lq, Lk)
    if sliding_window is not None:
        allowed = allowed & (k_positions > q_positions - sliding_window)
    allowed = allowed.expand(batch, 1, q_length, kv_length)
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -kv_length:].bool()
    elif position_ids is not None and q_length == kv_length:
        sequence = (position_ids.expand(batch, -1) == 0).cumsum(-1)  # (B, L): which packed sample
        allowed = allowed & (sequence[:, None, :, None] == sequence[:, None, None, :])
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padded query row attends to all: finite, unused
    groups = heads // key.shape[1]
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        repeat_kv(key, groups),
        repeat_kv(value, groups),
        attn_mask=allowed,
        dropout_p=dropout,
        scale=scaling,
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register("causal_stand_in", causal_stand_in)
AttentionMaskInterface.register("causal_stand_in", flash_attention_mask)  # the 2D padding mask, as for flash


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def batch(
    name: str, layouts: list[str], *, padding: str = "left", seed: int = 0
) -> tuple[dict, torch.Tensor]:
    """Model inputs and roles ``[B, L]`` for one layout per row (``"T M M T R"``), padded to one length.

    MEDIA positions hold the image placeholder (VLMs: runs of :data:`IMAGE_TOKENS`, one image each) or a
    random text id (text models, whose "media" positions are ordinary tokens marked MEDIA). Position ids
    follow the attention mask, so left padding does not shift them. Padded positions have role TEXT.
    """
    rows = [parse_layout(layout)[0] for layout in layouts]
    length = max(len(row) for row in rows)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    roles = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        start = length - len(row) if padding == "left" else 0
        span = slice(start, start + len(row))
        ids = torch.randint(FIRST_TEXT_TOKEN, VOCAB, (len(row),), generator=generator)
        if FAMILIES[name].is_vlm:
            ids = torch.where(row == Role.MEDIA, IMAGE_TOKEN, ids)
        input_ids[b, span], attention_mask[b, span], roles[b, span] = ids, 1, row
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if name != "qwen2_vl":  # Qwen2-VL computes its 3D rope positions from the attention mask itself
        inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs.update(media_inputs(name, input_ids, seed=seed))
    return inputs, roles


def media_inputs(name: str, input_ids: torch.Tensor, *, seed: int = 0) -> dict:
    """Pixel inputs matching the image placeholders of ``input_ids`` (nothing for text models)."""
    images = int((input_ids == IMAGE_TOKEN).sum()) // IMAGE_TOKENS
    if not FAMILIES[name].is_vlm or images == 0:
        return {}
    generator = torch.Generator().manual_seed(seed + 1)
    if name == "llava":
        return dict(pixel_values=torch.randn(images, 3, 8, 8, generator=generator))
    # Qwen2-VL: 16 flattened patches of 3 x 2 (temporal) x 2 x 2 values per image, on a 1 x 4 x 4 grid.
    return dict(
        pixel_values=torch.randn(images * 16, 24, generator=generator),
        image_grid_thw=torch.tensor([[1, 4, 4]] * images),
        mm_token_type_ids=(input_ids == IMAGE_TOKEN).int(),
    )


def image_of_position(input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, L]``: the index (in ``pixel_values`` order) of the image a placeholder belongs to; -1 for text."""
    is_image = input_ids == IMAGE_TOKEN
    index = (is_image.flatten().cumsum(0) - 1).view_as(input_ids) // IMAGE_TOKENS
    return torch.where(is_image, index, -1)


def images_slice(name: str, first: int, stop: int) -> slice:
    """The rows of ``pixel_values`` that hold images ``first .. stop - 1``."""
    rows_per_image = 16 if name == "qwen2_vl" else 1
    return slice(first * rows_per_image, stop * rows_per_image)


def unpadded_rows(name: str, inputs: dict, roles: torch.Tensor) -> list[tuple[dict, torch.Tensor]]:
    """Each row of a padded batch on its own, without padding, with its own images: ``[(inputs, roles)]``."""
    images = image_of_position(inputs["input_ids"])
    rows = []
    for b, valid in enumerate(inputs["attention_mask"].bool()):
        input_ids = inputs["input_ids"][b, valid][None]
        row = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        if name != "qwen2_vl":
            row["position_ids"] = torch.arange(input_ids.shape[1])[None]
        own = images[b][images[b] >= 0]
        if own.numel():
            pixels = images_slice(name, int(own.min()), int(own.max()) + 1)
            row["pixel_values"] = inputs["pixel_values"][pixels]
            if name == "qwen2_vl":
                row["image_grid_thw"] = inputs["image_grid_thw"][int(own.min()) : int(own.max()) + 1]
                row["mm_token_type_ids"] = (input_ids == IMAGE_TOKEN).int()
        rows.append((row, roles[b, valid][None]))
    return rows


def perturbed(input_ids: torch.Tensor, where: torch.Tensor, *, seed: int = 1) -> torch.Tensor:
    """``input_ids`` with every text position in ``where`` replaced by a different random text id."""
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, VOCAB - FIRST_TEXT_TOKEN, input_ids.shape, generator=generator)
    other = (input_ids - FIRST_TEXT_TOKEN + shift) % (VOCAB - FIRST_TEXT_TOKEN) + FIRST_TEXT_TOKEN
    return torch.where(where & (input_ids != IMAGE_TOKEN), other, input_ids)


# --------------------------------------------------------------------------------------------------
# The dense reference
# --------------------------------------------------------------------------------------------------


def rule_mask(
    roles: torch.Tensor, attention_mask: torch.Tensor, *, window: int | None = None
) -> torch.Tensor:
    """The MMA rule read literally, ``[B, 1, L, L]`` bool; with ``window``, also ``k > q - window``.

    A valid query ``q`` sees a valid key ``k`` iff (``k <= q``, or ``q`` MEDIA, ``k`` TEXT, ``k > q`` and no
    valid RESPONSE in ``(q, k]``), and the key lies in the window. A padded query sees only itself.
    """
    size, length = roles.shape
    roles, valid = roles.tolist(), attention_mask.bool().tolist()
    allowed = torch.zeros(size, 1, length, length, dtype=torch.bool)
    for b in range(size):
        for q in range(length):
            if not valid[b][q]:
                allowed[b, 0, q, q] = True
                continue
            response_between = False  # is there a valid RESPONSE in (q, k]
            for k in range(length):
                if k > q and valid[b][k] and roles[b][k] == Role.RESPONSE:
                    response_between = True
                in_window = window is None or k > q - window
                mutual = roles[b][q] == Role.MEDIA and roles[b][k] == Role.TEXT and not response_between
                allowed[b, 0, q, k] = valid[b][k] and in_window and (k <= q or mutual)
    return allowed


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean mask in the form eager attention adds to its scores."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def layer_windows(model: PreTrainedModel) -> dict[str, int | None]:
    """The window of each layer type of the language model (None: full attention)."""
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"]
    return {kind: (window if kind == "sliding_attention" else None) for kind in set(types)}


def reference_masks(
    model: PreTrainedModel, roles: torch.Tensor, attention_mask: torch.Tensor, *, windows: bool = True
):
    """The prepared 4D additive mask(s) that make the plain eager ``model`` compute the rule.

    ``windows=False`` drops the sliding windows: a wrong reference that tests use to show the window matters.
    """
    masks = {
        kind: additive(rule_mask(roles, attention_mask, window=window if windows else None))
        for kind, window in layer_windows(model).items()
    }
    # Models with several layer types take a dict per type; the others one mask for every layer.
    return masks if len(masks) > 1 else next(iter(masks.values()))


@torch.no_grad()
def reference_logits(name: str, inputs: dict, roles: torch.Tensor, *, windows: bool = True) -> torch.Tensor:
    """Logits of the plain eager model of ``name`` given the dense reference masks."""
    model = build(name, "eager")
    inputs = dict(inputs)
    attention_mask = inputs["attention_mask"]
    if name == "qwen2_vl":
        # Its 3D rope positions are computed from the 2D padding mask, which a 4D mask replaces: give them.
        inputs["position_ids"], _ = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            inputs["image_grid_thw"],
            attention_mask=attention_mask,
        )
    inputs["attention_mask"] = reference_masks(model, roles, attention_mask, windows=windows)
    return model(**inputs).logits


@torch.no_grad()
def logits(model: PreTrainedModel, inputs: dict, roles: torch.Tensor | None = None) -> torch.Tensor:
    if roles is None:
        return model(**inputs).logits
    return model(**inputs, mma_roles=roles).logits
