"""Words the tokenizer does not know: found before training, refused as labels, added with extend_vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import tiny_config
from transformers import AutoModelForImageTextToText, AutoProcessor

from aki.data import synthetic
from aki.data.sources import LlavaFile
from aki.models import AkiForConditionalGeneration, aki_tiny
from aki.models.aki import AkiProcessor
from aki.models.aki.builders import extend_word_tokenizer, unknown_pieces
from aki.train import DataError, run, run_sft
from aki.train.config import load_config
from aki.train.lineage import read_stages
from aki.train.vocabulary import extend_vocabulary, scan

# Two answers in the synthetic vocabulary, two outside it ("crimson", "teal"), one question word outside it ("hue").
CHATS = [
    ("what colour is the star?", "red"),
    ("what hue is the star?", "crimson"),
    ("which shape is blue?", "circle"),
    ("what colour is the circle?", "teal"),
]


def write_chats(directory: Path, chats=CHATS) -> Path:
    """A LLaVA JSON file of one-turn chats with a 32 px image each, images on disk."""
    records = []
    for index, (question, answer) in enumerate(chats):
        Image.new("RGB", (32, 32), (40 * index, 90, 200)).save(directory / f"image_{index}.png")
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"chat{index}", "image": f"image_{index}.png", "conversations": turns})
    path = directory / "chats.json"
    path.write_text(json.dumps(records))
    return path


def source(path: Path) -> str:
    return f"data.sources=[{{format: llava, name: mine, path: {path}}}]"


def test_unknown_pieces_are_the_words_as_written():
    tokenizer = synthetic.tokenizer()
    assert unknown_pieces(tokenizer, ["<image>\nwhat hue is the Star?", "red (B)", "teal-ish."]) == [
        ["hue", "Star"],
        [],
        ["teal", "-", "ish"],
    ]


def test_an_extended_tokenizer_reads_old_text_as_before_and_new_words_with_the_next_ids():
    tokenizer = synthetic.tokenizer()
    extended = extend_word_tokenizer(tokenizer, ["crimson", "teal", "red"])  # "red" is known: not added twice
    assert len(extended) == len(tokenizer) + 2 == 85
    old = "<s> <|user|>\n<image>\nwhere is the red star relative to the blue circle?<|end|>\nright (B)</s>"
    assert extended(old)["input_ids"] == tokenizer(old)["input_ids"]
    or_, question_mark = tokenizer.convert_tokens_to_ids(["or", "?"])
    assert extended("crimson or teal?")["input_ids"] == [83, or_, 84, question_mark]
    assert extended.decode([83, 84]) == "crimson teal"


def test_the_scan_counts_unknown_words_and_the_samples_whose_answer_has_one(tmp_path):
    found = scan(synthetic.tokenizer(), [LlavaFile(write_chats(tmp_path))], read_shards=False)
    assert dict(found.words) == {"hue": 1, "crimson": 1, "teal": 1}
    assert (found.samples, found.unknown_answers) == (4, 2)
    assert found.new_words() == ["crimson", "hue", "teal"]  # equal counts: alphabetical
    report = found.report(extending=False)
    assert (
        "does not know 3 words" in report and "2 of 4 samples have one in an answer and are skipped" in report
    )
    assert "model.extend_vocabulary=true" in report


def test_answers_with_unknown_words_are_skipped_counted_and_named(tmp_path, capsys):
    config = tiny_config(
        "sft", tmp_path / "run", "steps=1", source(write_chats(tmp_path)), "data.shuffle=false"
    )
    result = run_sft(config)
    reasons = dict(result.skipped)
    assert sorted(reasons) == ["mine:chat1", "mine:chat3"]
    assert (
        "does not know ('crimson')" in reasons["mine:chat1"] and "trained as <unk>" in reasons["mine:chat1"]
    )
    assert "model.extend_vocabulary=true" in reasons["mine:chat3"]
    assert result.sample_ids == [["mine:chat0", "mine:chat2"]]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_samples"] == 2
    assert "warning: the tokenizer does not know 3 words of the training data" in capsys.readouterr().out


def test_under_the_error_policy_an_unknown_answer_word_stops_the_run(tmp_path):
    config = tiny_config(
        "sft", tmp_path / "run", "steps=1", source(write_chats(tmp_path)), "data.shuffle=false"
    )
    config.data.on_bad_sample = "error"
    with pytest.raises(DataError, match=r"bad sample 'mine:chat1': its answer holds words .*'crimson'"):
        run_sft(config)


def test_new_rows_start_at_the_mean_of_the_old_ones():
    torch.manual_seed(0)
    tokenizer = synthetic.tokenizer()
    model = AkiForConditionalGeneration(aki_tiny(tokenizer))
    processor = AkiProcessor.for_model(model.config, tokenizer)
    embeddings = model.get_input_embeddings().weight.detach().clone()  # (83, 64)
    head = model.get_output_embeddings().weight.detach().clone()
    extended = extend_vocabulary(model, processor, ["crimson", "teal"])
    assert len(extended.tokenizer) == model.config.text_config.vocab_size == 85
    assert (
        extended.image_token_id == processor.image_token_id
        and extended.chat_template == processor.chat_template
    )
    new_embeddings, new_head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_embeddings.shape == new_head.shape == (85, 64)
    torch.testing.assert_close(new_embeddings[:83], embeddings)
    torch.testing.assert_close(new_embeddings[83:], embeddings.mean(0).expand(2, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(new_head[83:], head.mean(0).expand(2, -1), atol=1e-4, rtol=0)


def test_extend_vocabulary_trains_the_new_words_and_round_trips_through_save_and_the_auto_classes(tmp_path):
    config = tiny_config(
        "sft", tmp_path / "run", "steps=2", source(write_chats(tmp_path)), "model.extend_vocabulary=true"
    )
    result = run_sft(config)
    assert result.skipped == []  # every answer can be said now
    processor = AutoProcessor.from_pretrained(result.final_dir)
    model = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    tokenizer = processor.tokenizer
    assert [tokenizer.convert_tokens_to_ids(word) for word in ("crimson", "hue", "teal")] == [83, 84, 85]
    assert len(tokenizer) == model.config.text_config.vocab_size == 86
    assert model.get_input_embeddings().weight.shape == model.get_output_embeddings().weight.shape == (86, 64)
    head = model.get_output_embeddings().weight
    assert not torch.allclose(head[83], head[85])  # the new rows started equal; training told them apart
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what hue is it?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert 84 in processor(images=[Image.new("RGB", (32, 32))], text=prompt)["input_ids"][0].tolist()
    assert read_stages(result.final_dir)[-1]["added_words"] == 3


def test_extend_vocabulary_needs_the_language_model_trained():
    with pytest.raises(ValueError, match="extend_vocabulary trains the new rows"):
        load_config("sft", overrides=["model.extend_vocabulary=true", "model.lora={r: 4}"])
    with pytest.raises(ValueError, match=r"needs model\.train_language_model=true"):
        load_config("sft", overrides=["model.extend_vocabulary=true", "model.train_language_model=false"])


def test_a_run_that_extends_the_vocabulary_resumes_bit_for_bit(tmp_path):
    data = source(write_chats(tmp_path))
    whole = run_sft(tiny_config("sft", tmp_path / "whole", "steps=4", data, "model.extend_vocabulary=true"))
    halves = tiny_config("sft", tmp_path / "halves", "steps=4", data, "model.extend_vocabulary=true")
    assert run(halves, stop_at=2).final_dir is None
    halves.checkpoint.resume = "auto"  # the same words get the same ids again, so the checkpoint fits
    assert run(halves).losses == whole.losses


def test_a_larger_tokenizer_than_the_models_embeddings_is_refused(tmp_path):
    pretrained = run_sft(tiny_config("sft", tmp_path / "first", "steps=1"))
    larger = extend_word_tokenizer(synthetic.tokenizer(), ["crimson", "teal"])
    larger.save_pretrained(tmp_path / "tokenizer")
    config = tiny_config("sft", tmp_path / "second", "steps=1", f"model.init={pretrained.final_dir}")
    config.model.tokenizer = str(tmp_path / "tokenizer")
    with pytest.raises(
        ValueError, match="the tokenizer has 85 tokens but the model's embeddings have 83 rows"
    ):
        run_sft(config)
