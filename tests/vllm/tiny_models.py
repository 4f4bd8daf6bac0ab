"""Tiny random AKI and LLaVA models saved to a directory, built from configs (nothing is downloaded).

vLLM's CPU attention takes head sizes 32, 64, 80, ... (not 16), so the language models have heads of 32.
Weights are drawn wider than Llama's default (std ``TEXT_STD``) so that greedy answers vary from prompt to
prompt and the media rows' extra attention moves them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

TEXT_STD = 0.25
WORDS = (
    "What is this? What color is it? Describe the image. Which shape is on the left? It is a red cat on a "
    "blue mat. How many are there? USER: ASSISTANT:"
)
TINY_TEXT = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "initializer_range": TEXT_STD,
}


def tokenizer():
    return tiny_tokenizer([WORDS])


def save_tiny_aki(directory: Path, *, seed: int = 0) -> Path:
    """A tiny AKI (SigLIP 32 px, 4 latents, Llama 4 x 128 with heads of 32, an output head with a bias) and its
    processor in ``directory``."""
    tok = tokenizer()
    config = aki_tiny(tok, text_config=TINY_TEXT, text_head_bias=True)
    torch.manual_seed(seed)
    model = AkiForConditionalGeneration(config).eval()
    with torch.no_grad():  # the released AKI's output head has a trained bias: vLLM must load and add it
        model.get_output_embeddings().bias.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    AkiProcessor.for_model(config, tok).save_pretrained(directory)
    return directory


LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] if message['content'] is not string "
    "else message['content'] }}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_tiny_llava(directory: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA-1.5 (CLIP 32 px with 16 patches, Llama 4 x 128) in the layout of LLaVA checkpoints on the hub.

    Its chat template writes LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` prompts. transformers 5 saves the
    tower without its ``vision_model.`` level; the weights file is rewritten with it, as released LLaVA
    checkpoints have it (and as vLLM's LLaVA loads them).
    """
    from safetensors.torch import load_file, save_file
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = tokenizer()
    text = {key: value for key, value in TINY_TEXT.items() if key != "model_type"}
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        text_config=LlamaConfig(**text, **ids, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    weights = directory / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {_hub_name(name): tensor for name, tensor in tensors.items()}, weights, metadata={"format": "pt"}
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    processor.save_pretrained(directory)
    return directory


def _hub_name(name: str) -> str:
    for prefix in ("vision_tower.", "model.vision_tower."):
        if name.startswith(prefix) and not name.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + name[len(prefix) :]
    return name
