"""The released checkpoint layout: built by hand here with tiny shapes, loaded and converted losslessly."""

from __future__ import annotations

import json

import pytest
import torch
from aki_model_helpers import noise, user
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedTokenizerFast

from aki.models import AkiConfig, AkiForConditionalGeneration, AkiProcessor, aki_tiny, convert_reference
from aki.models.aki.convert import load_reference, load_reference_tokenizer, resolve_config

BASE_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    " ",
    "\n",
]
WORDS = ["A", "What", "is", "this", "?", "cat", "."]
JUNK_ROWS = 5  # regular rows past initial_tokenizer_len (a padded vocabulary): never used by the reference


def reference_tokenizer():
    """A base tokenizer, then <image> and <|endofchunk|> added after it, as the reference factory does."""
    backend = Tokenizer(
        models.WordLevel({t: i for i, t in enumerate(BASE_TOKENS + WORDS)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s"), behavior="isolated")
    backend.add_special_tokens(BASE_TOKENS[:8])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    initial_len = len(tokenizer)
    tokenizer.add_tokens(["<image>", "<|endofchunk|>"], special_tokens=True)
    return tokenizer, initial_len


def reference_key(key: str) -> str:
    """Our parameter name -> the released one (written out independently of convert.py)."""
    replacements = [
        ("vision_tower.", "vision_encoder."),
        ("language_model.", "lang_model."),
        ("resampler.", "vision_tokenizer."),
        (".attn.", ".0."),
        (".ff.norm.", ".1.0."),
        (".ff.up.", ".1.1."),
        (".ff.down.", ".1.3."),
    ]
    for ours, theirs in replacements:
        key = key.replace(ours, theirs)
    return key


def reference_state_dict(model: AkiForConditionalGeneration, initial_len: int) -> dict[str, torch.Tensor]:
    """Our weights in the released layout: added-token rows split off into decoupled tensors, junk rows added."""
    state = {reference_key(k): v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for base, extra in [
        ("lang_model.model.embed_tokens.weight", "lang_model.model.embed_tokens.additional_embedding.weight"),
        ("lang_model.lm_head.weight", "lang_model.lm_head.additional_fc.weight"),
        ("lang_model.lm_head.bias", "lang_model.lm_head.additional_fc.bias"),
    ]:
        full = state.pop(base)
        junk = 100 * torch.randn((JUNK_ROWS, *full.shape[1:]), generator=generator)
        state[base] = torch.cat([full[:initial_len], junk])
        state[extra] = full[initial_len:].clone()
    state["lang_model.model.rotary_emb.inv_freq"] = torch.ones(8)  # a buffer old transformers saved
    return state


def write_release(tmp_path, tokenizer, initial_len: int):
    """A tiny checkpoint in the released layout with ``tokenizer``'s files, and the model it was exported from."""
    config = aki_tiny(tokenizer, text_head_bias=True)
    config.resampler_depth, config.resampler_heads, config.resampler_head_dim, config.resampler_ff_mult = (
        6,
        8,
        64,
        4,
    )
    torch.manual_seed(0)
    model = AkiForConditionalGeneration(config).eval()
    directory = tmp_path / "release"
    vision_dir, text_dir = tmp_path / "siglip", tmp_path / "llama"
    config.vision_config.save_pretrained(vision_dir)
    config.text_config.save_pretrained(text_dir)
    tokenizer.save_pretrained(directory)
    save_file(reference_state_dict(model, initial_len), directory / "model.safetensors")
    arguments = {
        "vision_encoder_path": str(vision_dir),
        "lang_model_path": str(text_dir),
        "pad_token_id": tokenizer.pad_token_id,
        "initial_tokenizer_len": initial_len,
        "num_vision_tokens": config.num_latents,
        "decoder_layers_attr_name": None,
        "gradient_checkpointing": False,
        "base_img_size": None,
    }
    (directory / "config.json").write_text(json.dumps(arguments))
    return directory, model


@pytest.fixture
def release(tmp_path):
    """A tiny checkpoint in the released layout, and the model it was exported from."""
    tokenizer, initial_len = reference_tokenizer()
    directory, model = write_release(tmp_path, tokenizer, initial_len)
    return directory, model, tokenizer, initial_len


def logits(model, processor):
    text = processor.apply_chat_template([user(noise(0), "What is this?")], add_generation_prompt=True)
    with torch.no_grad():
        return model(**processor(images=[noise(0)], text=text)).logits


def test_reference_layout_loads_losslessly(release):
    directory, original, tokenizer, initial_len = release
    loaded = load_reference(directory)[0]
    assert loaded.config.media_token_id == tokenizer.convert_tokens_to_ids("<image>") == initial_len
    assert loaded.config.text_config.vocab_size == initial_len + 2
    before, after = original.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    processor = AkiProcessor.for_model(loaded.config, tokenizer)
    assert torch.equal(logits(original, processor), logits(loaded, processor))


def test_convert_reference_writes_a_normal_hugging_face_directory(release, tmp_path):
    directory, original, *_ = release
    out = convert_reference(directory, tmp_path / "converted")
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()
    }
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(model) is AkiForConditionalGeneration and type(processor) is AkiProcessor
    assert torch.equal(logits(original, processor), logits(model, processor))


def test_an_explicit_config_must_match_the_tokenizer(release):
    directory, original, *_ = release
    loaded = load_reference(directory, config=AkiConfig(**original.config.to_dict()))[0]
    assert torch.equal(loaded.resampler.latents, original.resampler.latents)
    wrong = aki_tiny(vocab_size=40, media_token_id=3)
    with pytest.raises(
        ValueError, match=r"given config \(vocab 40, media_token_id 3\) does not match .* \(vocab 19"
    ):
        load_reference(directory, config=wrong)[0]


def test_missing_unexpected_and_mis_shaped_keys_are_all_listed(release):
    directory, *_ = release
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    del state["vision_tokenizer.norm.weight"]
    state["vision_tokenizer.extra_scale"] = torch.ones(1)
    state["vision_tokenizer.latents"] = torch.zeros(5, 32)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(ValueError) as error:
        load_reference(directory)[0]
    message = str(error.value)
    assert "1 missing keys:\n    resampler.norm.weight" in message
    assert "1 unexpected keys:\n    resampler.extra_scale" in message
    assert "1 mis-shaped keys:\n    resampler.latents: checkpoint (5, 32), model (4, 32)" in message


def test_decoupled_rows_must_cover_the_initial_vocabulary(release):
    directory, *_ = release
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    state["lang_model.lm_head.weight"] = state["lang_model.lm_head.weight"][:3]
    save_file(state, directory / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"cannot fold lang_model.lm_head.additional_fc.weight|cannot fold .*lm_head"
    ):
        load_reference(directory)[0]


def test_unknown_backbones_need_an_explicit_config(release):
    directory, *_ = release
    arguments = json.loads((directory / "config.json").read_text())
    arguments["lang_model_path"] = "someone/unknown-model"
    (directory / "config.json").write_text(json.dumps(arguments))
    with pytest.raises(ValueError, match=r"lang_model_path='someone/unknown-model'.*pass config="):
        load_reference(directory)[0]


def test_released_backbone_names_give_the_4b_architecture_with_tokenizer_ids():
    tokenizer, initial_len = reference_tokenizer()
    arguments = {
        "vision_encoder_path": "google/siglip-so400m-patch14-384",
        "lang_model_path": "microsoft/Phi-3.5-mini-instruct",
        "initial_tokenizer_len": initial_len,
        "num_vision_tokens": 144,
    }
    config = resolve_config(arguments, tokenizer, None)
    assert (config.vision_config.hidden_size, config.text_config.hidden_size, config.num_latents) == (
        1152,
        3072,
        144,
    )
    assert config.text_config.vocab_size == initial_len + 2 and config.media_token_id == initial_len
    assert config.text_config.pad_token_id == tokenizer.pad_token_id and config.text_head_bias


def test_the_cli_converts_and_refuses_a_broken_checkpoint_by_name(release, tmp_path):
    from typer.testing import CliRunner

    from aki.cli import app

    directory, *_ = release
    result = CliRunner().invoke(app, ["convert", "reference", str(directory), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").exists()
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    broken = CliRunner().invoke(app, ["convert", "reference", str(directory), str(tmp_path / "out2")])
    assert broken.exit_code != 0
    assert not (tmp_path / "out2" / "model.safetensors").exists()
    assert "is not a readable safetensors file" in broken.output


# --------------------------------------------------------------------------------------------------
# A release whose tokenizer is a SentencePiece model only (what the reference's slow tokenizer saves)
# --------------------------------------------------------------------------------------------------

SENTENCEPIECE_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "What is this?\nIt is a cat.",
    "the assistant gives helpful answers to the user's questions.",
]
PROMPT = (
    "<s> <|system|>\nA chat between a curious user.<|end|>\n<|user|>\n<image>\nWhat is this?<|end|>\n"
    "<|assistant|>\nIt is a cat.</s>"
)
# PROMPT's ids under the reference's tokenizer: transformers 4.41.2's slow LlamaTokenizer(legacy=False) on the
# model trained below, with <pad>, <image> and <|endofchunk|> added (computed in a separate environment).
REFERENCE_IDS = [
    1,
    292,
    3,
    309,
    312,
    271,
    278,
    292,
    290,
    294,
    308,
    296,
    273,
    263,
    271,
    300,
    303,
    275,
    270,
    284,
]
REFERENCE_IDS += [304, 6, 309, 4, 309, 321, 309, 314, 278, 279, 265, 299, 264, 311, 6, 309, 5, 309, 288, 279]
REFERENCE_IDS += [263, 271, 266, 304, 2]


def sentencepiece_release_tokenizer(directory):
    """A Llama-style SentencePiece BPE model trained here (byte fallback, identity normalisation, a dummy
    prefix), saved as the slow tokenizer saves it: tokenizer.model plus the added tokens in tokenizer_config.json.
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCEPIECE_CORPUS * 20),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        user_defined_symbols=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    directory.mkdir(parents=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    added = {
        str(320 + i): {"content": token, "special": True}
        for i, token in enumerate(("<pad>", "<image>", "<|endofchunk|>"))
    }
    for entry in added.values():
        entry.update(lstrip=False, rstrip=False, normalized=False, single_word=False)
    tokenizer_config = {
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def test_a_release_with_only_a_sentencepiece_model_loads_with_the_reference_token_ids(tmp_path):
    sentencepiece_release_tokenizer(tmp_path / "spm")
    tokenizer = load_reference_tokenizer(tmp_path / "spm")
    assert tokenizer(PROMPT, add_special_tokens=False)["input_ids"] == REFERENCE_IDS
    directory, model = write_release(tmp_path, tokenizer, initial_len=320)
    (directory / "tokenizer.json").unlink(missing_ok=True)  # the release has the SentencePiece model only
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (directory / name).write_bytes((tmp_path / "spm" / name).read_bytes())
    loaded, release_tokenizer = load_reference(directory)
    assert release_tokenizer(PROMPT, add_special_tokens=False)["input_ids"] == REFERENCE_IDS
    assert (loaded.config.media_token_id, loaded.config.assistant_token_id) == (321, 5)
    assert torch.equal(loaded.language_model.lm_head.weight, model.language_model.lm_head.weight)
    # converted, the directory's processor (a fast tokenizer) keeps the reference's ids
    out = convert_reference(directory, tmp_path / "converted")
    processor = AutoProcessor.from_pretrained(out)
    expanded = [t for i in REFERENCE_IDS for t in ([i] * loaded.config.num_latents if i == 321 else [i])]
    assert processor(text=PROMPT, images=[noise(0)])["input_ids"][0].tolist() == expanded
