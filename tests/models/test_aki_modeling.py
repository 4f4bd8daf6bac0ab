"""AkiForConditionalGeneration: image merging, MMA behaviour, padding, round trips, freezing, bad input."""

from __future__ import annotations

import pytest
import torch
from aki_model_helpers import assistant, images_of, noise, user
from transformers import AutoConfig, AutoModelForImageTextToText

import aki.models  # noqa: F401  (registers the Auto classes)
from aki.integration import is_mma_enabled
from aki.mma import Role, roles_from_labels
from aki.models import AkiConfig, AkiForConditionalGeneration, aki_tiny


def chat_batch(processor, chat, *, generation_prompt=True):
    text = processor.apply_chat_template(chat, add_generation_prompt=generation_prompt)
    return processor(images=images_of(chat) or None, text=text)


def count_images(model):
    """Forward hook on the vision tower: how many calls, how many images."""
    seen = {"calls": 0, "images": 0}

    def hook(module, args, output):
        seen["calls"] += 1
        seen["images"] += args[0].shape[0]

    return seen, model.vision_tower.register_forward_hook(hook)


def test_merge_writes_features_in_placeholder_order(model):
    media = model.config.media_token_id
    ids = torch.tensor([[5, media, media, media, media, 6], [media, media, media, media, 7, 8]])
    embeds = model.get_input_embeddings()(ids)
    features = torch.arange(2 * 4 * 64, dtype=torch.float32).view(2, 4, 64)
    merged = model.merge_image_features(ids, embeds, features)
    assert torch.equal(merged[0, 1:5], features[0]) and torch.equal(merged[1, 0:4], features[1])
    assert torch.equal(merged[0, [0, 5]], embeds[0, [0, 5]]) and torch.equal(merged[1, 4:], embeds[1, 4:])


def test_forward_feeds_resampled_image_tokens_to_the_language_model(model, processor):
    batch = chat_batch(processor, [user(noise(0), "What is this?")])
    out = model(**batch, output_hidden_states=True)
    placeholders = batch["input_ids"][0] == model.config.media_token_id
    tokens = model.get_image_features(batch["pixel_values"]).pooler_output  # (1, 4, 64)
    assert torch.equal(out.hidden_states[0][0, placeholders], tokens[0])
    assert torch.equal(out.image_outputs.pooler_output, tokens)
    assert out.logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)


def test_count_mismatch_names_both_counts(model):
    media = model.config.media_token_id
    ids = torch.tensor([[5, media, media, media, 6]])
    with pytest.raises(
        ValueError,
        match=r"1 images give 4 image tokens \(4 each\) but input_ids hold 3 placeholder tokens \(per sample: \[3\]\)",
    ):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32))
    with pytest.raises(
        ValueError, match=r"2 images give 8 image tokens .* hold 0 placeholder tokens \(per sample: \[0\]\)"
    ):
        model(input_ids=torch.tensor([[5, 6]]), pixel_values=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"input_ids hold 3 image placeholder tokens but no pixel_values"):
        model(input_ids=ids)
    with pytest.raises(
        ValueError,
        match=r"pixel_values must have shape \[num_images, channels, height, width\], got \(1, 1, 3, 32, 32\)",
    ):
        model(input_ids=ids, pixel_values=torch.zeros(1, 1, 3, 32, 32))


def test_vision_tower_runs_once_per_forward_on_all_images(model, processor):
    chat = [user(noise(1), noise(2), "What is this?")]
    seen, handle = count_images(model)
    model(**chat_batch(processor, chat))
    handle.remove()
    assert seen == {"calls": 1, "images": 2}


# ------------------------------------------------------------------------------------------------
# MMA
# ------------------------------------------------------------------------------------------------


def test_mma_changes_media_rows_and_after_but_nothing_before(model, processor):
    batch = chat_batch(processor, [user(noise(3), "What is this?")])
    first_media = int((batch["mma_roles"][0] == Role.MEDIA).nonzero()[0])
    with torch.no_grad():
        on = model(**batch).logits
        model.set_mma(False)
        off = model(**batch).logits
    assert not is_mma_enabled(model.language_model) and not model.config.use_mma
    assert torch.equal(on[0, :first_media], off[0, :first_media])
    assert (on[0, first_media:] - off[0, first_media:]).abs().amax(-1).min() > 1e-5  # here >= 4e-5


def test_without_media_mma_is_exactly_causal(model, processor):
    batch = chat_batch(processor, [user("What is this?")])
    with torch.no_grad():
        on = model(**batch).logits
        model.set_mma(False)
        off = model(**batch).logits
    assert torch.equal(on, off)


def test_no_leak_from_responses_and_media_see_the_question(model, processor):
    chat = [user(noise(4), "What is this?"), assistant("It is a cat.")]
    batch = chat_batch(processor, chat, generation_prompt=False)
    roles = batch["mma_roles"][0]
    media = (roles == Role.MEDIA).nonzero().flatten()
    first_response = int((roles == Role.RESPONSE).nonzero()[0])  # the newline after <|assistant|>
    question = int(media[-1]) + 2  # "What"
    vocab = processor.tokenizer.get_vocab()

    def logits_with(position, token):
        ids = batch["input_ids"].clone()
        ids[0, position] = vocab[token]
        with torch.no_grad():
            return model(**{**batch, "input_ids": ids}).logits[0]

    base = logits_with(question, "What")
    changed_response = logits_with(first_response, "red")
    assert torch.allclose(changed_response[:first_response], base[:first_response], atol=1e-6, rtol=0)
    changed_question = logits_with(question, "Describe")
    assert (changed_question[media] - base[media]).abs().amax() > 1e-4  # media attend to the question
    model.set_mma(False)
    assert torch.allclose(logits_with(question, "Describe")[media], logits_with(question, "What")[media])


def test_roles_default_to_placeholders_and_labels(model, processor):
    batch = chat_batch(
        processor, [user(noise(5), "What is this?"), assistant("It is a cat.")], generation_prompt=False
    )
    labels = torch.where(batch["mma_roles"] == Role.RESPONSE, batch["input_ids"], -100)
    derived_roles = roles_from_labels(batch["input_ids"], model.config.media_token_id, labels)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        implicit = model(**inputs, labels=labels)
        explicit = model(**inputs, labels=labels, mma_roles=derived_roles)
        from_processor = model(**batch, labels=labels)
    assert torch.equal(implicit.logits, explicit.logits)
    assert torch.equal(derived_roles, batch["mma_roles"])  # labelled answer == the processor's RESPONSE span
    assert torch.equal(implicit.logits, from_processor.logits)
    shifted = implicit.logits[0, :-1]
    targets = labels[0, 1:]
    expected = torch.nn.functional.cross_entropy(shifted[targets != -100], targets[targets != -100])
    assert torch.allclose(implicit.loss, expected)


def test_left_padding_does_not_change_valid_logits(model, processor):
    chats = [
        [user(noise(6), "What is this?")],
        [user(noise(7), noise(8), "What color?"), assistant("It is red.")],
    ]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
    batch = processor(images=[images_of(c) for c in chats], text=texts)
    with torch.no_grad():
        together = model(**batch).logits
        for row, (chat, text) in enumerate(zip(chats, texts, strict=True)):
            alone = model(**processor(images=images_of(chat), text=text)).logits[0]
            assert torch.allclose(together[row, -alone.shape[0] :], alone, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Saving, loading, freezing
# ------------------------------------------------------------------------------------------------


def test_save_and_auto_load_round_trip_exactly(tokenizer, processor, tmp_path):
    torch.manual_seed(1)
    model = AkiForConditionalGeneration(aki_tiny(tokenizer, text_head_bias=True)).eval()
    assert model.language_model.lm_head.bias is not None
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), AkiConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is AkiForConditionalGeneration and is_mma_enabled(loaded.language_model)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    batch = chat_batch(processor, [user(noise(9), "What is this?")])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_mma_switch_is_saved(model, tmp_path):
    model.set_mma(False)
    model.save_pretrained(tmp_path)
    loaded = AkiForConditionalGeneration.from_pretrained(tmp_path)
    assert not loaded.config.use_mma and not is_mma_enabled(loaded.language_model)


def test_trainable_parts_match_the_paper(model, processor):
    counts = model.set_trainable()
    assert counts["vision_tower"] == 0
    assert counts["resampler"] == sum(p.numel() for p in model.resampler.parameters())
    assert counts["language_model"] == sum(p.numel() for p in model.language_model.parameters())
    batch = chat_batch(
        processor, [user(noise(10), "What is this?"), assistant("It is a cat.")], generation_prompt=False
    )
    labels = torch.where(batch["mma_roles"] == Role.RESPONSE, batch["input_ids"], -100)
    model.train()
    model(**batch, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert model.resampler.latents.grad is not None and model.resampler.latents.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is not None
