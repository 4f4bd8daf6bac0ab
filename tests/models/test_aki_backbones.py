"""The language model comes from the config: tiny Llama, Phi-3 and Qwen2 (tied embeddings) all work with MMA."""

from __future__ import annotations

import pytest
import torch
from aki_model_helpers import assistant, images_of, noise, user
from transformers import AutoModelForImageTextToText

from aki.integration import is_mma_enabled
from aki.mma import Role
from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
BACKBONES = {
    "llama": None,  # the builder's default
    "phi3": {"model_type": "phi3", **SMALL, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "qwen2": {"model_type": "qwen2", **SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True},
}
CHATS = [
    [user(noise(20), "What is this?")],
    [user(noise(21), "What color?"), assistant("It is red."), user("A cat?")],
]


@pytest.fixture(params=sorted(BACKBONES))
def backbone(request, tokenizer):
    config = aki_tiny(tokenizer, text_config=BACKBONES[request.param])
    torch.manual_seed(0)
    model = AkiForConditionalGeneration(config).eval()
    assert model.language_model.config.model_type == request.param
    return model, AkiProcessor.for_model(config, tokenizer)


def test_backbone_applies_mma_and_generates_batched_like_per_sample(backbone):
    model, processor = backbone
    assert is_mma_enabled(model.language_model)
    texts = [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in CHATS]
    batch = processor(images=[images_of(chat) for chat in CHATS], text=texts)
    with torch.no_grad():
        mma = model(**batch).logits
        model.set_mma(False)
        causal = model(**batch).logits
        model.set_mma(True)
    media = batch["mma_roles"] == Role.MEDIA
    assert (mma[media] - causal[media]).abs().amax() > 1e-4

    options = {"max_new_tokens": 5, "do_sample": False}
    together = model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
    for row, (chat, text) in enumerate(zip(CHATS, texts, strict=True)):
        alone = processor(images=images_of(chat), text=text)
        assert torch.equal(
            together[row], model.generate(**alone, **options)[0, alone["input_ids"].shape[1] :]
        )


def test_backbone_round_trips(backbone, tmp_path):
    model, _ = backbone
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    tied = model.config.text_config.tie_word_embeddings
    shares = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert shares == tied
