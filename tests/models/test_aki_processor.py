"""AkiProcessor: the prompt format, placeholder expansion, MMA roles, padding and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aki_model_helpers import assistant, images_of, noise, solid, user
from PIL import Image
from transformers import AutoProcessor

from aki.mma import Role, parse_layout
from aki.models import AkiImageProcessor, AkiProcessor
from aki.models.aki.processing_aki import CHAT_SYSTEM_MESSAGE, CHAT_TEMPLATE, chat_template

T, M, R = Role.TEXT, Role.MEDIA, Role.RESPONSE
SYSTEM = {"role": "system", "content": "A chat."}


def tokens_and_roles(processor, batch, row=0):
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    roles = batch["mma_roles"][row][batch["attention_mask"][row].bool()]
    return list(zip(processor.tokenizer.convert_ids_to_tokens(ids.tolist()), roles.tolist(), strict=True))


def test_prompt_format_is_the_reference_one(processor):
    chat = [user(solid((0, 0, 0)), "What is this?"), assistant("It is a cat.")]
    assert processor.apply_chat_template(chat) == (
        "<s> <|system|>\n" + CHAT_SYSTEM_MESSAGE + "<|end|>\n<|user|>\n<image>\nWhat is this?<|end|>\n"
        "<|assistant|>\nIt is a cat.</s>"
    )
    assert processor.apply_chat_template(chat[:1], add_generation_prompt=True).endswith(
        "<|user|>\n<image>\nWhat is this?<|end|>\n<|assistant|>\n"
    )


def test_chat_template_can_change_the_default_system_message_only(processor, tmp_path):
    assert chat_template() == CHAT_TEMPLATE
    short = AkiProcessor(
        processor.image_processor,
        processor.tokenizer,
        chat_template=chat_template("Be brief."),
        num_image_tokens=processor.num_image_tokens,
    )
    chat = [user(solid((0, 0, 0)), "What is this?"), assistant("It is a cat.")]
    assert short.apply_chat_template(chat) == processor.apply_chat_template(chat).replace(
        CHAT_SYSTEM_MESSAGE, "Be brief."
    )
    # an explicit system turn still wins, and the template survives save / load
    assert short.apply_chat_template([SYSTEM, *chat]) == processor.apply_chat_template([SYSTEM, *chat])
    short.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).apply_chat_template(chat) == short.apply_chat_template(
        chat
    )


@pytest.mark.parametrize("message", ['say "hi"', "a {{ b }}", "50%", "back\\slash"])
def test_chat_template_refuses_a_system_message_that_would_break_the_template(message):
    with pytest.raises(ValueError, match="default system message"):
        chat_template(message)


def test_roles_of_a_single_turn_prompt_written_out(processor):
    chat = [SYSTEM, user(solid((255, 0, 0)), "What is this?")]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    batch = processor(images=images_of(chat), text=prompt)
    # The newline after the final <|assistant|> is RESPONSE: media see the prompt through the header only.
    assert tokens_and_roles(processor, batch) == [
        ("<s>", T), (" ", T), ("<|system|>", T), ("\n", T), ("A", T), (" ", T), ("chat", T), (".", T),
        ("<|end|>", T), ("\n", T), ("<|user|>", T), ("\n", T),
        ("<image>", M), ("<image>", M), ("<image>", M), ("<image>", M),
        ("\n", T), ("What", T), (" ", T), ("is", T), (" ", T), ("this", T), ("?", T), ("<|end|>", T), ("\n", T),
        ("<|assistant|>", T), ("\n", R),
    ]  # fmt: skip
    assert batch["mma_roles"].dtype == torch.long


def test_roles_of_a_multi_turn_chat_with_two_images(processor):
    chat = [
        SYSTEM,
        user(solid((255, 0, 0)), "What is this?"),
        assistant("It is a cat."),
        user(solid((0, 0, 255)), "What color?"),
    ]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    batch = processor(images=images_of(chat), text=prompt)
    # <s> ' ' <|system|> \n A ' ' chat . <|end|> \n <|user|> \n | image | \n What ' ' is ' ' this ? <|end|> \n
    # <|assistant|> | \n It ' ' is ' ' a ' ' cat . </s> \n | <|user|> \n | image | \n What ' ' color ? <|end|> \n
    # <|assistant|> | \n
    expected = parse_layout("TTTTTTTTTTTT MMMM TTTTTTTTT T RRRRRRRRRRR TT MMMM TTTTTTT T R")
    assert torch.equal(batch["mma_roles"], expected)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


def test_caption_without_assistant_header_is_response(processor):
    batch = processor(images=[solid((1, 2, 3))], text="<image>A cat.<|endofchunk|>")
    assert torch.equal(batch["mma_roles"], parse_layout("MMMM RRRRR"))  # A, " ", cat, ., <|endofchunk|>


def test_several_images_in_one_prompt_keep_their_order(processor):
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    chat = [user(red, blue, "What color?")]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert "<image>\n<image>\nWhat color?" in prompt
    batch = processor(images=[red, blue], text=prompt)
    assert (batch["mma_roles"] == M).sum() == 8
    assert batch["pixel_values"][0, 0].eq(1.0).all() and batch["pixel_values"][0, 2].eq(-1.0).all()
    assert batch["pixel_values"][1, 0].eq(-1.0).all() and batch["pixel_values"][1, 2].eq(1.0).all()


def test_batch_is_left_padded_and_rows_match_single_processing(processor):
    texts = [
        "<|user|>\n<image>\nWhat is this?<|end|>\n<|assistant|>\n",
        "<|user|>\nWhat?<|end|>\n<|assistant|>\n",
    ]
    image = noise(0)
    batch = processor(images=[[image], []], text=texts)
    alone = [processor(images=[image], text=texts[0]), processor(text=texts[1])]
    assert batch["input_ids"].shape == (2, alone[0]["input_ids"].shape[1])
    for row, single in enumerate(alone):
        length = single["input_ids"].shape[1]
        for key in ("input_ids", "mma_roles", "attention_mask"):
            assert torch.equal(batch[key][row, -length:], single[key][0])
    gap = batch["input_ids"].shape[1] - alone[1]["input_ids"].shape[1]
    assert batch["attention_mask"][1, :gap].eq(0).all()
    assert batch["input_ids"][1, :gap].eq(processor.tokenizer.pad_token_id).all()
    assert torch.equal(batch["pixel_values"], alone[0]["pixel_values"])


def test_right_padding_on_request(processor):
    batch = processor(text=["<|user|>\nWhat?", "<|user|>\nWhat is this?"], padding_side="right")
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0]


def test_flat_images_are_assigned_in_placeholder_order(processor):
    first, second, third = noise(1), noise(2), noise(3)
    flat = processor(images=[first, second, third], text=["<image><image>A", "<image>B"])
    nested = processor(images=[[first, second], [third]], text=["<image><image>A", "<image>B"])
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])
    assert torch.equal(flat["pixel_values"][2], processor(images=third, text="<image>")["pixel_values"][0])


def test_tokenized_chat_template_equals_rendering_then_processing(processor):
    chat = [user(noise(4), "What is this?"), assistant("It is a cat."), user(noise(5), "What color?")]
    direct = processor(
        images=images_of(chat), text=processor.apply_chat_template(chat, add_generation_prompt=True)
    )
    tokenized = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    for key in ("input_ids", "attention_mask", "mma_roles", "pixel_values"):
        assert torch.equal(tokenized[key], direct[key])


def test_save_and_auto_load_round_trip(processor, tmp_path):
    import aki.models  # noqa: F401  (registers the Auto classes)

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is AkiProcessor and type(loaded.image_processor) is AkiImageProcessor
    assert loaded.num_image_tokens == processor.num_image_tokens == 4
    assert loaded.chat_template == processor.chat_template
    chat = [user(noise(6), "What is this?")]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    before, after = processor(images=images_of(chat), text=text), loaded(images=images_of(chat), text=text)
    for key in before:
        assert torch.equal(before[key], after[key])


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def test_image_processor_normalises_to_minus_one_one_without_crop():
    processor = AkiImageProcessor()
    pixels = processor(solid((255, 0, 51), size=(500, 300)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 384, 384)  # squashed, not cropped
    assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]))
    assert torch.allclose(pixels[0].flatten(1).std(1), torch.zeros(3))


def test_image_processor_is_pil_bicubic_and_takes_pil_numpy_torch_and_grey():
    processor = AkiImageProcessor(size={"height": 16, "width": 16})
    image = noise(7, size=(37, 23))
    expected = (np.asarray(image.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255 - 0.5) / 0.5
    from_pil = processor(image, return_tensors="pt")["pixel_values"][0]
    assert np.abs(from_pil.numpy() - expected.transpose(2, 0, 1)).max() < 1e-6
    array = np.array(image)
    assert torch.equal(processor(array, return_tensors="pt")["pixel_values"][0], from_pil)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.equal(processor(tensor, return_tensors="pt")["pixel_values"][0], from_pil)
    grey = processor(image.convert("L"), return_tensors="pt")["pixel_values"][0]
    assert grey.shape == (3, 16, 16) and torch.equal(grey[0], grey[1])


def test_image_paths_are_read(processor, tmp_path):
    path = tmp_path / "red.png"
    solid((255, 0, 0)).save(path)
    from_path = processor(images=[str(path)], text="<image>")["pixel_values"]
    assert torch.equal(from_path, processor(images=[solid((255, 0, 0))], text="<image>")["pixel_values"])


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_more_images_than_placeholders(processor):
    with pytest.raises(
        ValueError,
        match=r"3 images were given but the text has 2 <image> placeholders \(per text: \[1, 1\]\)",
    ):
        processor(images=[noise(1), noise(2), noise(3)], text=["<image>A", "<image>B"])


def test_fewer_images_than_placeholders_in_one_text(processor):
    with pytest.raises(ValueError, match=r"text 1 has 2 <image> placeholders but 1 images were given for it"):
        processor(images=[[noise(1)], [noise(2)]], text=["<image>A", "<image><image>B"])


def test_images_without_any_placeholder(processor):
    with pytest.raises(ValueError, match=r"1 images were given but the text has no <image> placeholder"):
        processor(images=[noise(1)], text="What is this?")


def test_placeholders_without_images(processor):
    with pytest.raises(
        ValueError, match=r"the text has 2 <image> placeholders \(per text: \[2\]\) but no images"
    ):
        processor(text="<image><image>What?")


def test_max_length_that_cuts_through_image_tokens(processor):
    text = "<|user|>\n<image>\nWhat?"  # <|user|> \n then the image at positions 2..5
    with pytest.raises(
        ValueError,
        match=r"max_length=4 would cut text 0 \(length 9\) through the tokens of image 0 \(positions 2\.\.5\)",
    ):
        processor(images=[noise(1)], text=text, max_length=4)
    kept = processor(images=[noise(1)], text=text, max_length=7)
    assert kept["input_ids"].shape == (1, 7) and (kept["mma_roles"] == M).sum() == 4


def test_corrupt_missing_and_truncated_image_files(processor, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"image 0 of text 0: image file .*garbage\.png' could not be read"):
        processor(images=[str(garbage)], text="<image>")
    with pytest.raises(ValueError, match=r"image 1 of text 0: image file .*missing\.png' does not exist"):
        processor(images=[noise(1), tmp_path / "missing.png"], text="<image><image>")
    full = tmp_path / "full.png"
    noise(2, size=(64, 64)).save(full)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        processor(images=[str(truncated)], text="<image>")
    with pytest.raises(ValueError, match=r"image 0 of text 0: image .*truncated\.png' could not be decoded"):
        processor(images=[Image.open(truncated)], text="<image>")


def test_unknown_arguments_and_missing_tokens_are_refused(processor, tokenizer):
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        processor(text="A", trunc=True)
    with pytest.raises(ValueError, match="AKI takes images and text only"):
        processor(text="A", videos=[np.zeros((2, 8, 8, 3))])
    with pytest.raises(ValueError, match="has no '<img>' token"):
        AkiProcessor(AkiImageProcessor(), tokenizer, image_token="<img>")
