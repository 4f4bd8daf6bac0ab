"""Training data: encoding (ids, labels and roles from one template pass), flips, positions, sources, stream."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from aki.data.augment import flip_text
from aki.data.encoding import CaptionEncoder, ChatEncoder, collate
from aki.data.sources import (
    BadSample,
    CaptionFile,
    CaptionFolder,
    LlavaFile,
    RawSample,
    ShardSource,
    SyntheticScenes,
)
from aki.data.stream import Layout, Mixture, TrainStream
from aki.mma import IGNORE_INDEX, Role

T, M, R = int(Role.TEXT), int(Role.MEDIA), int(Role.RESPONSE)


def _image(colour=(200, 30, 30), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def test_caption_sample_labels_the_caption_and_end_of_chunk_and_is_all_response(processor):
    encoded = CaptionEncoder(processor, max_length=64).encode(
        RawSample("s", (_image(),), caption="a red circle.")
    )
    assert _tokens(processor, encoded.input_ids) == [
        "<s>", *["<image>"] * 4, "a", " ", "red", " ", "circle", ".", "<|endofchunk|>",
    ]  # fmt: skip
    assert encoded.roles == [R, M, M, M, M, R, R, R, R, R, R, R]
    labelled = [label != IGNORE_INDEX for label in encoded.labels]
    assert labelled == [False, False, False, False, False, True, True, True, True, True, True, True]


def test_caption_text_first_puts_the_image_after_the_caption(processor):
    encoder = CaptionEncoder(processor, max_length=64, order="text_first")
    encoded = encoder.encode(RawSample("s", (_image(),), caption="a red circle."))
    assert _tokens(processor, encoded.input_ids)[-6:] == ["."] + ["<image>"] * 4 + ["<|endofchunk|>"]
    assert encoded.roles[-6:] == [R, M, M, M, M, R]


def test_chat_sample_follows_the_reference_prompt_labels_and_roles(processor):
    turns = (
        {"from": "human", "value": "<image>\nwhat colour is the circle?"},
        {"from": "gpt", "value": "red"},
    )
    encoded = ChatEncoder(processor, max_length=256).encode(RawSample("s", (_image(),), conversations=turns))
    tokens = _tokens(processor, encoded.input_ids)
    text = "".join(tokens).replace("<image>" * 4, "<image>")
    assert text.startswith("<s> <|system|>\nA chat between")
    assert text.endswith("<|user|>\n<image>\nwhat colour is the circle?<|end|>\n<|assistant|>\nred</s>")
    labelled = [tokens[i] for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert labelled == ["red", "</s>"]
    header = tokens.index("<|assistant|>")
    # The image sees the prompt through <|assistant|> (TEXT); the newline after it is RESPONSE, not labelled.
    assert encoded.roles[header:] == [T, R, R, R]
    assert encoded.labels[header + 1] == IGNORE_INDEX
    assert encoded.roles[tokens.index("<image>") : tokens.index("<image>") + 4] == [M] * 4


def test_multi_turn_chat_with_two_images_labels_every_answer_and_nothing_else(processor):
    turns = (
        {"from": "human", "value": "<image>\n<image>\nwhich is red?"},
        {"from": "gpt", "value": "A"},
        {"from": "human", "value": "and blue?"},
        {"from": "gpt", "value": "B"},
    )
    raw = RawSample("s", (_image(), _image((0, 0, 200))), conversations=turns)
    encoded = ChatEncoder(processor, max_length=256).encode(raw)
    tokens = _tokens(processor, encoded.input_ids)
    assert tokens.count("<image>") == 8
    assert [tokens[i] for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX] == [
        "A",
        "</s>",
        "B",
        "</s>",
    ]
    labelled_roles = {encoded.roles[i] for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX}
    assert labelled_roles == {R}
    second_user = [i for i, t in enumerate(tokens) if t == "<|user|>"][1]
    assert encoded.roles[second_user] == T  # the second question is prompt text again


def test_text_first_order_puts_images_after_the_question(processor):
    turns = ({"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"})
    encoder = ChatEncoder(processor, max_length=256, order="text_first")
    tokens = _tokens(processor, encoder.encode(RawSample("s", (_image(),), conversations=turns)).input_ids)
    user = tokens.index("<|user|>")
    assert (
        "".join(tokens[user:])
        .replace("<image>" * 4, "<image>")
        .startswith("<|user|>\nwhat colour?\n<image><|end|>")
    )


def test_bad_samples_name_themselves(processor, tmp_path):
    chat = ChatEncoder(processor, max_length=256)
    turns = ({"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "red"})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    cases = [
        (RawSample("a", (str(tmp_path / "nope.png"),), conversations=turns), "nope.png' does not exist"),
        (
            RawSample("b", (str(tmp_path / "broken.png"),), conversations=turns),
            "broken.png.* could not be read",
        ),
        (
            RawSample("c", (_image(), _image()), conversations=turns),
            "1 <image> placeholders but the sample has 2",
        ),
        (RawSample("d", (_image(),), conversations=turns[:1]), "no labelled token"),
        (RawSample("e", (), problem="unreadable record"), "unreadable record"),
        (
            RawSample("f", (_image(),), conversations=({"from": "gpt", "value": "<image> x"},)),
            "holds <image>",
        ),
    ]
    for raw, message in cases:
        with pytest.raises(BadSample, match=message) as caught:
            chat.encode(raw)
        assert caught.value.sample_id == raw.id
    # <s> + 4 image tokens + 22 x ("a", " ", "b", " ") + <|endofchunk|> = 94 tokens.
    with pytest.raises(BadSample, match=r"94 tokens .* exceed max_length=20"):
        CaptionEncoder(processor, max_length=20).encode(RawSample("g", (_image(),), caption="a b " * 22))


def test_collate_pads_on_the_right_with_no_label_and_text_role(processor):
    encoder = CaptionEncoder(processor, max_length=64)
    short = encoder.encode(RawSample("s", (_image(),), caption="red."))
    long = encoder.encode(RawSample("l", (_image(),), caption="a red circle."))
    batch = collate([short, long], processor=processor)
    gap = len(long.input_ids) - len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * gap
    assert batch["labels"][0, -gap:].tolist() == [IGNORE_INDEX] * gap
    assert batch["mma_roles"][0, -gap:].tolist() == [T] * gap
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------------------------------
# Flips
# --------------------------------------------------------------------------------------------------


def test_flip_swaps_side_words_keeping_case_and_mirrors_boxes():
    assert (
        flip_text("Left of the rightmost LEFT left-hand", image_width=100)
        == "Right of the leftmost RIGHT right-hand"
    )
    assert flip_text("bright leftover", image_width=100) == "bright leftover"
    assert flip_text("[0.10, 0.2, 0.35, 0.4]", image_width=100) == "[0.65, 0.2, 0.90, 0.4]"
    assert flip_text("[10, 20, 30, 40]", image_width=100) == "[70, 20, 90, 40]"


def test_a_flipped_sample_mirrors_its_image_and_its_words(processor):
    image = Image.new("RGB", (32, 32))
    image.putpixel((0, 0), (255, 255, 255))
    turns = ({"from": "human", "value": "<image>\nis it left or right?"}, {"from": "gpt", "value": "left"})
    encoded = ChatEncoder(processor, max_length=256).encode(
        RawSample("s", (image,), conversations=turns), flip=True
    )
    tokens = _tokens(processor, encoded.input_ids)
    answer = [tokens[i] for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert answer == ["right", "</s>"]
    assert encoded.images[0].getpixel((31, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------------------------------
# Positions and mixture
# --------------------------------------------------------------------------------------------------


def test_layout_cuts_global_positions_into_disjoint_rank_micro_batches():
    # batch 2, 2 micro-batches per step, 2 ranks: a step covers 8 positions.
    rank0, rank1 = Layout(2, 2, 2, 0), Layout(2, 2, 2, 1)
    assert [list(rank0.positions(i)) for i in range(4)] == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert [list(rank1.positions(i)) for i in range(4)] == [[2, 3], [6, 7], [10, 11], [14, 15]]
    single = Layout(8)
    assert list(single.positions(1)) == list(range(8, 16))


def test_mixture_follows_its_weights_and_counts_occurrences_like_a_replay():
    mixture = Mixture([3.0, 1.0], seed=0)
    picks = [mixture.pick(p) for p in range(10_000)]
    assert sum(source == 1 for source, _ in picks) == pytest.approx(2_500, abs=150)
    seen = [0, 0]
    for source, occurrence in picks:
        assert occurrence == seen[source]
        seen[source] += 1
    assert Mixture([3.0, 1.0], seed=0).pick(9_999) == picks[-1]  # random access, no replay
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        Mixture([0.0, 0.0], seed=0)


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def test_caption_file_folder_and_llava_sources_read_their_records(tmp_path, synthetic_files):
    captions = CaptionFile(synthetic_files.captions)
    assert len(captions) == 12 and captions[0].caption.endswith(".")
    assert captions[0].images[0] == str(synthetic_files.images / "train_0_000000.png")
    llava = LlavaFile(synthetic_files.questions)
    assert llava[0].conversations[0]["from"] == "human" and llava[0].id == "train:train_0_000000"
    _image().save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("a red square.\n")
    _image().save(tmp_path / "a.jpg")  # no caption: not a sample
    folder = CaptionFolder(tmp_path)
    assert len(folder) == 1 and folder[0].caption == "a red square." and folder[0].id.endswith(":b")


def _write_shards(directory, shards: int, per_shard: int) -> str:
    from webdataset import TarWriter

    for shard in range(shards):
        with TarWriter(str(directory / f"shard-{shard}.tar")) as writer:
            for i in range(per_shard):
                png = io.BytesIO()
                _image((10 * i, 0, 0)).save(png, format="PNG")
                writer.write({"__key__": f"s{shard}-{i}", "png": png.getvalue(), "txt": f"a red circle {i}."})
    return f"{directory}/shard-{{0..{shards - 1}}}.tar"


def _stream(processor, sources, **kwargs) -> TrainStream:
    defaults = {
        "weights": [1.0] * len(sources),
        "encoder": CaptionEncoder(processor, max_length=64),
        "layout": Layout(2),
    }
    return TrainStream(sources=sources, **{**defaults, **kwargs})


def test_webdataset_shards_are_split_across_slots_and_resume_inside_a_shard(tmp_path, processor):
    source = ShardSource(_write_shards(tmp_path, shards=4, per_shard=3), name="shards")
    ranks = [iter(_stream(processor, [source], layout=Layout(2, 1, 2, rank))) for rank in (0, 1)]
    items = [[next(stream) for _ in range(3)] for stream in ranks]  # 6 samples per rank = its 2 shards
    ids = [[i for item in rank_items for i in item["sample_ids"]] for rank_items in items]
    assert not set(ids[0]) & set(ids[1])
    assert {i.split("-")[0] for i in ids[0]} == {"shards:s0", "shards:s2"}  # shard % 2 slots == rank
    assert len(set(ids[0])) == 6

    # Resume rank 0 from its state after the first micro-batch: the same next samples.
    state = {items[0][0]["slot"]: items[0][0]["shard_states"]}
    resumed = iter(_stream(processor, [source], layout=Layout(2, 1, 2, 0), start=1, shard_states=state))
    assert [next(resumed)["sample_ids"] for _ in range(2)] == [item["sample_ids"] for item in items[0][1:]]


def test_stream_workers_give_the_same_micro_batches_in_order(processor):
    source = SyntheticScenes(size=20, image_size=32)
    encoder = CaptionEncoder(processor, max_length=128)
    inline = iter(DataLoader(_stream(processor, [source], encoder=encoder), batch_size=None, num_workers=0))
    workers = iter(DataLoader(_stream(processor, [source], encoder=encoder), batch_size=None, num_workers=2))
    for index in range(4):
        a, b = next(inline), next(workers)
        assert a["micro_batch"] == b["micro_batch"] == index
        assert a["sample_ids"] == b["sample_ids"] and len(a["sample_ids"]) == 2
        assert torch.equal(a["batch"]["input_ids"], b["batch"]["input_ids"])


def test_stream_visits_every_record_once_per_epoch(processor):
    source = SyntheticScenes(size=6, image_size=32)
    stream = iter(_stream(processor, [source], encoder=CaptionEncoder(processor, max_length=128)))
    epoch = [i for _ in range(3) for i in next(stream)["sample_ids"]]
    assert sorted(epoch) == sorted(source[i].id for i in range(6))


def test_a_micro_batch_of_only_bad_samples_gets_a_stand_in_without_labels(processor, tmp_path):
    records = [{"image": "missing.png", "caption": "x"}] * 2 + [
        {"image": "ok.png", "caption": "a red circle."}
    ] * 2
    _image().save(tmp_path / "ok.png")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    item = next(iter(_stream(processor, [CaptionFile(tmp_path / "c.jsonl")], shuffle=False)))
    assert [sample_id for sample_id, _ in item["skipped"]] == ["c:0", "c:1"]
    assert item["sample_ids"] == [] and item["error"] is None
    assert (item["batch"]["labels"] == IGNORE_INDEX).all()
    error_item = next(
        iter(_stream(processor, [CaptionFile(tmp_path / "c.jsonl")], shuffle=False, on_bad_sample="error"))
    )
    assert error_item["batch"] is None and "bad sample 'c:0'" in error_item["error"]
