"""Model sizes of AKI as config builders: the modeling code knows no sizes.

``aki_tiny()`` is a seconds-on-a-CPU model for tests and demos; ``aki_4b()`` is the released architecture
(SigLIP so400m-patch14-384, a 6-layer resampler with 144 latents, Phi-3.5-mini). Token ids and the vocabulary
size come from a tokenizer when one is given, never from constants: pass ``tokenizer=``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerFast

from .configuration_aki import AkiConfig
from .processing_aki import CHAT_SYSTEM_MESSAGE

MEDIA_TOKEN = "<image>"
ASSISTANT_TOKEN = "<|assistant|>"
TURN_TOKENS = ("<|user|>", "<|system|>")
UNK_TOKEN = "<unk>"
# <unk> for unknown pieces, then AKI's special tokens (docs/aki-reference.md): sequence ends, padding, the image
# placeholder, the end of a pre-training chunk and the chat headers.
SPECIAL_TOKENS = [
    UNK_TOKEN,
    "<s>",
    "</s>",
    "<pad>",
    MEDIA_TOKEN,
    "<|endofchunk|>",
    "<|system|>",
    "<|user|>",
    ASSISTANT_TOKEN,
    "<|end|>",
]
# Words and single punctuation marks: what the word-level tokenizer cuts text into by default.
WORD_PATTERN = r"\w+|[^\w\s]"

# google/siglip-so400m-patch14-384, vision tower: 27 x 27 = 729 patches of width 1152.
SIGLIP_SO400M_PATCH14_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}

# microsoft/Phi-3.5-mini-instruct: its config.json values (with the LongRoPE factors) in a data file.
PHI_3_5_MINI = json.loads((Path(__file__).parent / "phi_3_5_mini.json").read_text())


def aki_sized(
    tokenizer: Any = None,
    *,
    image_size: int,
    patch_size: int,
    vision_width: int,
    vision_layers: int,
    vision_heads: int,
    resampler_depth: int,
    resampler_heads: int,
    resampler_head_dim: int,
    num_latents: int,
    text_width: int,
    text_layers: int,
    text_heads: int,
    text_ffn: int,
    vision_ffn: int | None = None,
    resampler_ff_mult: int = 2,
    language_model: str = "llama",
    text_kv_heads: int | None = None,
    max_position_embeddings: int = 512,
    tie_embeddings: bool = False,
    text_init_std: float | None = None,
    text_config: dict | PreTrainedConfig | None = None,
    vocab_size: int | None = None,
    media_token_id: int | None = None,
    text_head_bias: bool = False,
    use_mma: bool = True,
) -> AkiConfig:
    """A small AKI of the given sizes: a SigLIP tower (``image_size / patch_size`` squared patches), a
    Perceiver resampler and a Llama-style causal LM (``language_model``: any model type with Llama's config
    fields, e.g. ``phi3``). ``aki_tiny`` and the quickstart's configs are built with it.

    ``vision_ffn`` defaults to twice ``vision_width``, ``text_kv_heads`` to ``text_heads``; ``text_init_std``
    (the LM's ``initializer_range``) to the model type's default. ``text_config`` replaces the sized LM with
    another config (a dict with ``model_type``, or a config). With ``tokenizer``, the vocabulary size and the
    special ids come from it.

    Example:
        >>> config = aki_sized(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
        ...     resampler_depth=1, resampler_heads=2, resampler_head_dim=16, num_latents=4, text_width=32,
        ...     text_layers=1, text_heads=2, text_ffn=64, vocab_size=40, media_token_id=39)
        >>> config.vision_config.num_hidden_layers, config.text_config.hidden_size, config.num_latents
        (1, 32, 4)
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    for width, heads, name in ((vision_width, vision_heads, "vision"), (text_width, text_heads, "text")):
        if width % heads:
            raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": vision_width,
        "intermediate_size": vision_ffn or 2 * vision_width,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
    }
    if text_config is None:
        text_config = {
            "model_type": language_model,
            "hidden_size": text_width,
            "intermediate_size": text_ffn,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": text_kv_heads or text_heads,
            "max_position_embeddings": max_position_embeddings,
            "tie_word_embeddings": tie_embeddings,
            **({} if text_init_std is None else {"initializer_range": text_init_std}),
        }
    return aki_config(
        vision=vision,
        text=text_config,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        media_token_id=media_token_id,
        resampler={
            "resampler_depth": resampler_depth,
            "resampler_heads": resampler_heads,
            "resampler_head_dim": resampler_head_dim,
            "resampler_ff_mult": resampler_ff_mult,
        },
        num_latents=num_latents,
        text_head_bias=text_head_bias,
        use_mma=use_mma,
    )


# aki_tiny's sizes: a 32 px SigLIP of 2 layers, a 2-layer resampler with 4 latents, a 2-layer Llama of width 64.
TINY_SIZES: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 32,
    "vision_layers": 2,
    "vision_heads": 2,
    "resampler_depth": 2,
    "resampler_heads": 2,
    "resampler_head_dim": 16,
    "num_latents": 4,
    "text_width": 64,
    "text_layers": 2,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_ffn": 128,
    "max_position_embeddings": 1024,
}


def aki_tiny(
    tokenizer: Any = None, *, vocab_size: int = 64, media_token_id: int = 63, **sizes: Any
) -> AkiConfig:
    """A tiny AKI (32 px SigLIP, 2-layer Llama of width 64, 4 latents) for tests and CPU demos.

    With ``tokenizer``, the vocabulary size and the media / pad / bos / eos ids come from it (the media token
    is ``<image>``). ``sizes`` override :data:`TINY_SIZES` or pass any other :func:`aki_sized` argument
    (``text_config`` swaps the tiny Llama for another tiny causal LM config: Phi-3, Qwen2, ...).
    """
    return aki_sized(
        tokenizer, vocab_size=vocab_size, media_token_id=media_token_id, **{**TINY_SIZES, **sizes}
    )


def aki_4b(
    tokenizer: Any = None,
    *,
    vocab_size: int = PHI_3_5_MINI["vocab_size"],
    media_token_id: int | None = None,
    text_head_bias: bool = True,
    use_mma: bool = True,
) -> AkiConfig:
    """The released AKI-4B architecture: SigLIP so400m-patch14-384, resampler 6 x (8 heads x 64, ff x4),
    144 latents, Phi-3.5-mini with a biased output head.

    Pass the checkpoint's ``tokenizer`` to get its vocabulary size and token ids (``load_reference`` does).
    """
    return aki_config(
        vision=SIGLIP_SO400M_PATCH14_384,
        text=PHI_3_5_MINI,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        media_token_id=media_token_id,
        resampler={
            "resampler_depth": 6,
            "resampler_heads": 8,
            "resampler_head_dim": 64,
            "resampler_ff_mult": 4,
        },
        num_latents=144,
        text_head_bias=text_head_bias,
        use_mma=use_mma,
    )


def word_tokenizer(
    corpus: Iterable[str],
    *,
    pattern: str | re.Pattern = WORD_PATTERN,
    keep_whitespace: bool = False,
    max_vocab_size: int = 65536,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained offline on ``corpus`` with AKI's special tokens (nothing is downloaded).

    Text is cut into the matches of ``pattern`` (by default words and single punctuation marks), so a word is
    the same token wherever it stands. The special tokens :data:`SPECIAL_TOKENS` get the ids 0-9, then every
    piece of the corpus gets one id, by frequency in the corpus, ties alphabetically: training is
    deterministic. Pieces not in the corpus are ``<unk>``. Spaces and newlines are not tokens (shorter
    sequences): decoding joins pieces with spaces and removes the space before punctuation (``"red ?"`` ->
    ``"red?"``). With ``keep_whitespace`` each space and newline is a token of its own, as in the tokenizers
    of real LMs, and text decodes exactly as written.

    Example:
        >>> tokenizer = word_tokenizer(["which shape is red?"])
        >>> tokenizer.tokenize("which shape is red?")
        ['which', 'shape', 'is', 'red', '?']
        >>> tokenizer.decode(tokenizer("which shape is red?")["input_ids"])
        'which shape is red?'
    """
    pattern = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    corpus = list(corpus)
    if keep_whitespace:
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{pattern}|\s"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        corpus.append(" \n")  # a space and a newline get ids whatever the corpus holds
    else:
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
        backend.decoder = decoders.WordPiece(cleanup=True)
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=SPECIAL_TOKENS[4:],
        clean_up_tokenization_spaces=False,  # the decoder already joins punctuation
    )


def unknown_pieces(tokenizer: Any, texts: Sequence[str]) -> list[list[str]]:
    """For each text, the pieces that ``tokenizer`` reads as its unknown token, as written in the text (cut by
    the tokenizer's own pre-tokenizer; special tokens such as ``<image>`` are known).

    Example:
        >>> tokenizer = word_tokenizer(["which shape is red?"])
        >>> unknown_pieces(tokenizer, ["which shape is teal?", "red", "teal or crimson?"])
        [['teal'], [], ['teal', 'or', 'crimson']]
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return [[] for _ in texts]
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [
        [text[start:end] for token, (start, end) in zip(e.ids, e.offsets, strict=True) if token == unk]
        for text, e in zip(texts, encodings, strict=True)
    ]


def extend_word_tokenizer(tokenizer: Any, words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A copy of a word-level ``tokenizer`` that also knows ``words``, with the ids after its last one, in the
    order given; every text it could read before is read as before (same pieces, same ids).

    Only word-level tokenizers (:func:`word_tokenizer`, the tiny default's) are extended this way: a subword
    tokenizer has no unknown words to add. The copy goes through ``save_pretrained`` / ``from_pretrained``,
    so it is exactly what a saved processor reloads.

    Example:
        >>> tokenizer = extend_word_tokenizer(word_tokenizer(["which shape is red?"]), ["teal"])
        >>> tokenizer.convert_tokens_to_ids("teal") == len(tokenizer) - 1
        True
    """
    words = [word for word in dict.fromkeys(words) if word not in tokenizer.get_vocab()]
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        path = Path(directory) / "tokenizer.json"
        state = json.loads(path.read_text())
        if state["model"]["type"] != "WordLevel":
            raise ValueError(
                f"only a word-level tokenizer can be extended with new words; this one is {state['model']['type']}"
            )
        first = len(tokenizer)
        state["model"]["vocab"].update({word: first + offset for offset, word in enumerate(words)})
        path.write_text(json.dumps(state, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(directory)


def tiny_tokenizer(texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """:func:`word_tokenizer` with whitespace tokens on AKI's default system message and ``texts``: for tests
    and demos whose prompts must tokenize exactly as they read (the newline after ``<|assistant|>`` included).
    """
    return word_tokenizer([CHAT_SYSTEM_MESSAGE, *texts], keep_whitespace=True)


def token_ids_from_tokenizer(tokenizer: Any, *, media_token: str = MEDIA_TOKEN) -> dict[str, int | None]:
    """Vocabulary size and special ids read from a tokenizer; raises if it lacks the media token."""
    media_token_id = tokenizer.convert_tokens_to_ids(media_token)
    if media_token_id is None or media_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {media_token!r} token: add it as a special token first")
    vocab = tokenizer.get_vocab()
    return {
        "vocab_size": len(tokenizer),
        "media_token_id": media_token_id,
        "assistant_token_id": vocab.get(ASSISTANT_TOKEN),
        "turn_token_ids": sorted(vocab[token] for token in TURN_TOKENS if token in vocab),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def aki_config(
    *,
    vision: dict,
    text: dict | PreTrainedConfig,
    resampler: dict[str, int],
    num_latents: int,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    media_token_id: int | None = None,
    text_head_bias: bool = False,
    use_mma: bool = True,
) -> AkiConfig:
    """An :class:`AkiConfig` from a SigLIP vision config dict, a causal LM config (dict with ``model_type``, or
    a config), the resampler's ``resampler_*`` fields and ``num_latents``. With ``tokenizer``, the vocabulary
    size and the media / pad / bos / eos ids come from it (``aki_tiny``, ``aki_4b`` and the quickstart's
    presets are built this way).
    """
    text = dict(text.to_dict() if isinstance(text, PreTrainedConfig) else text)
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    headers: dict[str, Any] = {}
    if tokenizer is not None:
        ids = token_ids_from_tokenizer(tokenizer)
        media_token_id = ids.pop("media_token_id")
        headers = {key: ids.pop(key) for key in ("assistant_token_id", "turn_token_ids")}
        text.update(ids)
    model_type = text.pop("model_type")
    return AkiConfig(
        vision_config=dict(vision),
        text_config=AutoConfig.for_model(model_type, **text),
        media_token_id=media_token_id,
        num_latents=num_latents,
        text_head_bias=text_head_bias,
        use_mma=use_mma,
        **headers,
        **resampler,
    )


__all__ = [
    "SPECIAL_TOKENS",
    "aki_4b",
    "aki_config",
    "aki_sized",
    "aki_tiny",
    "extend_word_tokenizer",
    "tiny_tokenizer",
    "token_ids_from_tokenizer",
    "unknown_pieces",
    "word_tokenizer",
]
