"""Load the released AKI checkpoint layout and convert it to a normal Hugging Face directory.

The release (``PyTorchModelHubMixin``) holds ``config.json`` with the constructor arguments of the reference
class (``vision_encoder_path``, ``lang_model_path``, ``initial_tokenizer_len``, ``num_vision_tokens``, ...),
``model.safetensors`` and the tokenizer files. Its state dict has the roots ``vision_encoder.`` (SigLIP vision
keys), ``vision_tokenizer.`` (the resampler) and ``lang_model.`` (the LM), and the tokens added after
``initial_tokenizer_len`` live in decoupled rows (``embed_tokens.additional_embedding``,
``lm_head.additional_fc``) which are folded here into ordinary matrices. Any key that is missing, unexpected
or of the wrong shape is refused with the full list; nothing is silently re-initialised.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase

from .builders import aki_4b, token_ids_from_tokenizer
from .configuration_aki import AkiConfig
from .modeling_aki import AkiForConditionalGeneration
from .processing_aki import AkiProcessor

# The reference resampler class fixes these (its constructor only takes the width and the latent count).
REFERENCE_RESAMPLER = {
    "resampler_depth": 6,
    "resampler_heads": 8,
    "resampler_head_dim": 64,
    "resampler_ff_mult": 4,
}
RELEASED_BACKBONES = ("siglip-so400m-patch14-384", "phi-3.5-mini")
# Non-learned buffers that older transformers versions saved and current ones recompute.
RECOMPUTED_BUFFERS = ("rotary_emb.inv_freq", "embeddings.position_ids")

_RENAMES = [
    (re.compile(r"^vision_encoder\."), "vision_tower."),
    (re.compile(r"^vision_tokenizer\.layers\.(\d+)\.0\."), r"resampler.layers.\1.attn."),
    (re.compile(r"^vision_tokenizer\.layers\.(\d+)\.1\.0\."), r"resampler.layers.\1.ff.norm."),
    (re.compile(r"^vision_tokenizer\.layers\.(\d+)\.1\.1\."), r"resampler.layers.\1.ff.up."),
    (re.compile(r"^vision_tokenizer\.layers\.(\d+)\.1\.3\."), r"resampler.layers.\1.ff.down."),
    (re.compile(r"^vision_tokenizer\."), "resampler."),
    (re.compile(r"^lang_model\."), "language_model."),
]


def load_reference(
    checkpoint_dir: str | Path, *, config: AkiConfig | None = None, use_mma: bool = True
) -> tuple[AkiForConditionalGeneration, PreTrainedTokenizerBase]:
    """Build :class:`AkiForConditionalGeneration` (and its tokenizer) from the released checkpoint layout.

    ``config`` defaults to the architecture named by ``config.json``: :func:`aki_4b` for the released
    backbones, or the configs found in local ``vision_encoder_path`` / ``lang_model_path`` directories. The
    vocabulary size and token ids always come from the checkpoint's tokenizer files.
    """
    directory = Path(checkpoint_dir)
    arguments = _read_json(directory / "config.json")
    if "initial_tokenizer_len" not in arguments:
        raise ValueError(
            f"{directory / 'config.json'} has no 'initial_tokenizer_len': not an AKI release layout"
        )
    tokenizer = load_reference_tokenizer(directory)
    config = resolve_config(arguments, tokenizer, config)
    config.use_mma = use_mma
    weights_file = directory / "model.safetensors"
    if not weights_file.is_file():
        raise ValueError(f"{weights_file} does not exist")
    try:
        weights = load_file(weights_file)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_file} is not a readable safetensors file: {error}") from error
    state_dict = map_reference_state_dict(weights, initial_tokenizer_len=arguments["initial_tokenizer_len"])
    check_state_dict(state_dict, config)
    model = AkiForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state_dict, dtype=_dtype_of(state_dict)
    )
    return model.eval(), tokenizer


def load_reference_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The release's tokenizer: its ``tokenizer.json`` when it has one, else its SentencePiece
    ``tokenizer.model`` read as the reference read it (Phi-3.5-mini's ``LlamaTokenizer`` with ``legacy=False``:
    a space prefix only at the start of the text, none after a special token), with the added tokens of its
    ``tokenizer_config.json``.
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(directory)
    if (directory / "tokenizer.model").is_file():
        return LlamaTokenizer.from_pretrained(directory, legacy=False)
    raise ValueError(
        f"{directory} has no tokenizer: neither tokenizer.json nor a SentencePiece tokenizer.model"
    )


def convert_reference(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a released AKI checkpoint into a Hugging Face directory (model, tokenizer, processor); returns it.

    The result loads with ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``
    after ``import aki``.
    """
    model, tokenizer = load_reference(checkpoint_dir)
    out = Path(out_dir)
    model.save_pretrained(out)
    AkiProcessor.for_model(model.config, tokenizer).save_pretrained(out)
    return out


def map_reference_state_dict(
    state_dict: dict[str, torch.Tensor], *, initial_tokenizer_len: int
) -> dict[str, torch.Tensor]:
    """Rename the reference keys and fold the decoupled rows of added tokens into ordinary matrices.

    A decoupled embedding / output head uses its regular rows for ids ``< initial_tokenizer_len`` and its
    ``additional`` rows for the ids after them, so the folded matrix is ``cat(regular[:initial], additional)``
    (the output bias likewise).
    """
    mapped = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        mapped[key] = tensor
    for extra_suffix, base_suffix in (
        (".additional_embedding.weight", ".weight"),
        (".additional_fc.weight", ".weight"),
        (".additional_fc.bias", ".bias"),
    ):
        for key in [k for k in mapped if k.endswith(extra_suffix)]:
            base_key = key[: -len(extra_suffix)] + base_suffix
            if base_key not in mapped:
                raise ValueError(f"checkpoint has {key} but not the regular rows {base_key} to fold it into")
            regular, additional = mapped[base_key], mapped.pop(key)
            if regular.shape[0] < initial_tokenizer_len or regular.shape[1:] != additional.shape[1:]:
                raise ValueError(
                    f"cannot fold {key} {tuple(additional.shape)} into {base_key} {tuple(regular.shape)} "
                    f"with initial_tokenizer_len={initial_tokenizer_len}"
                )
            mapped[base_key] = torch.cat([regular[:initial_tokenizer_len], additional])
    return mapped


def check_state_dict(state_dict: dict[str, torch.Tensor], config: AkiConfig) -> None:
    """Raise ``ValueError`` listing every missing, unexpected and mis-shaped key against ``config``'s model.

    Buffers that transformers recomputes (``RECOMPUTED_BUFFERS``) are dropped from ``state_dict`` in place.
    """
    with torch.device("meta"):
        expected_model = AkiForConditionalGeneration(config)
    expected = {key: tuple(tensor.shape) for key, tensor in expected_model.state_dict().items()}
    tied = set(expected_model.get_expanded_tied_weights_keys(all_submodels=True))
    for key in [k for k in state_dict if k not in expected and k.endswith(RECOMPUTED_BUFFERS)]:
        del state_dict[key]
    missing = sorted(set(expected) - set(state_dict) - tied)
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {expected[key]}"
        for key in set(state_dict) & set(expected)
        if tuple(state_dict[key].shape) != expected[key]
    )
    if missing or unexpected or mis_shaped:
        raise ValueError(
            "the checkpoint does not fit the AKI config:\n"
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + _listing("mis-shaped keys", mis_shaped)
        )


def resolve_config(
    arguments: dict[str, Any], tokenizer: PreTrainedTokenizerBase, config: AkiConfig | None
) -> AkiConfig:
    """The :class:`AkiConfig` of a release: ``config`` checked against the tokenizer, else the architecture its
    ``config.json`` arguments name (the released backbones, or local backbone directories)."""
    ids = token_ids_from_tokenizer(tokenizer)
    if config is not None:
        vocab_size = config.text_config.vocab_size
        if vocab_size != ids["vocab_size"] or config.media_token_id not in (None, ids["media_token_id"]):
            raise ValueError(
                f"the given config (vocab {vocab_size}, media_token_id {config.media_token_id}) does not match the "
                f"checkpoint's tokenizer (vocab {ids['vocab_size']}, <image> id {ids['media_token_id']})"
            )
        config.media_token_id = ids["media_token_id"]
        config.assistant_token_id, config.turn_token_ids = ids["assistant_token_id"], ids["turn_token_ids"]
        return config
    num_latents = arguments.get("num_vision_tokens", 144)
    vision_path, text_path = (
        str(arguments.get("vision_encoder_path", "")),
        str(arguments.get("lang_model_path", "")),
    )
    if all(
        name in path.lower() for name, path in zip(RELEASED_BACKBONES, (vision_path, text_path), strict=True)
    ):
        config = aki_4b(tokenizer)
        config.num_latents = num_latents
        return config
    if not (Path(vision_path, "config.json").is_file() and Path(text_path, "config.json").is_file()):
        raise ValueError(
            f"cannot build the architecture of vision_encoder_path={vision_path!r}, lang_model_path={text_path!r}: "
            "they are neither the released backbones nor local directories with a config.json; pass config="
        )
    vision = AutoConfig.from_pretrained(vision_path)
    text = AutoConfig.from_pretrained(text_path).to_dict()
    headers = {key: ids.pop(key) for key in ("media_token_id", "assistant_token_id", "turn_token_ids")}
    text.update(ids)
    return AkiConfig(
        vision_config=getattr(vision, "vision_config", vision),  # a full SigLIP config holds the vision part
        text_config=AutoConfig.for_model(text.pop("model_type"), **text),
        **headers,
        num_latents=num_latents,
        text_head_bias=True,
        **REFERENCE_RESAMPLER,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return json.loads(path.read_text())


def _dtype_of(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    counts = Counter(t.dtype for t in state_dict.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    if not items:
        return ""
    shown = "".join(f"\n    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {len(items)} {title}:{shown}{more}\n"


__all__ = [
    "check_state_dict",
    "convert_reference",
    "load_reference",
    "load_reference_tokenizer",
    "map_reference_state_dict",
    "resolve_config",
]
