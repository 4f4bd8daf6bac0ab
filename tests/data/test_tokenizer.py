"""The tokenizer of the synthetic scenes (``aki.data.synthetic.tokenizer``, built by the one word-level builder
``aki.models.aki.word_tokenizer``): one token per word, AKI's special tokens first."""

from __future__ import annotations

from transformers import AutoTokenizer

from aki.data.synthetic import caption, make_sample, vocabulary
from aki.data.synthetic import tokenizer as train_tokenizer
from aki.models.aki.builders import SPECIAL_TOKENS
from aki.models.aki.processing_aki import CHAT_TEMPLATE, chat_template

QUICKSTART_TEMPLATE = chat_template("")  # the quickstart's chat template: an empty system turn


def test_special_tokens_come_first_in_a_fixed_order():
    tokenizer = train_tokenizer()
    assert SPECIAL_TOKENS == [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
        "<image>",
        "<|endofchunk|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
    ]
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(10))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert tokenizer.tokenize("<s><image>a red star<|endofchunk|>") == [
        "<s>",
        "<image>",
        "a",
        "red",
        "star",
        "<|endofchunk|>",
    ]


def test_every_word_of_the_synthetic_vocabulary_is_one_token():
    tokenizer = train_tokenizer()
    assert [tokenizer.tokenize(word) for word in vocabulary()] == [[word] for word in vocabulary()]
    # 10 special tokens and the 73 vocabulary words (the system message is empty)
    assert len(tokenizer) == 83


def test_the_chat_template_has_an_empty_system_turn_when_a_chat_has_none():
    tokenizer = train_tokenizer()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "which shape is red?"}]}]
    prompt = tokenizer.apply_chat_template(chat, chat_template=QUICKSTART_TEMPLATE, tokenize=False)
    assert prompt.startswith("<s> <|system|>\n<|end|>\n<|user|>\n<image>\n")
    assert "<unk>" not in tokenizer.tokenize(prompt)
    assert len(tokenizer.tokenize(prompt)) == 11  # AKI's default system message alone is 29 words


def test_a_word_is_the_same_token_in_a_caption_and_as_an_answer():
    tokenizer = train_tokenizer()
    chat = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "what colour is the star?"}],
        },
        {"role": "assistant", "content": "red"},
    ]
    prompt = tokenizer.apply_chat_template(chat, chat_template=CHAT_TEMPLATE, tokenize=False)
    # spaces and newlines are no tokens: the chat headers delimit the turns
    assert tokenizer.tokenize(prompt)[-12:] == [
        "<|user|>",
        "<image>",
        "what",
        "colour",
        "is",
        "the",
        "star",
        "?",
        "<|end|>",
        "<|assistant|>",
        "red",
        "</s>",
    ]
    answer_id = tokenizer(prompt)["input_ids"][-2]
    assert tokenizer("a small red circle")["input_ids"][2] == answer_id


def test_text_decodes_as_written_and_unknown_words_are_unk():
    tokenizer = train_tokenizer()
    sample = make_sample("train", 3)
    choice = next(s for i in range(100) if (s := make_sample("train", i)).family == "multiple_choice")
    for text in (sample.question.splitlines()[0], caption(sample.scene), *choice.question.splitlines()):
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.decode(tokenizer(choice.answer)["input_ids"]) == choice.answer  # "right (B)"
    assert tokenizer.tokenize("is the zebra red?") == ["is", "the", "<unk>", "red", "?"]


def test_an_option_marker_is_one_token_the_one_after_its_option_text():
    # so the answer's letter is a copy of the token that follows, in the list, the option text just written
    tokenizer = train_tokenizer()
    assert tokenizer.tokenize("left (A)\nright (B)") == ["left", "(A)", "right", "(B)"]
    assert tokenizer.tokenize("white circle (D)") == ["white", "circle", "(D)"]
    markers = [f"({letter})" for letter in "ABCD"]
    assert [tokenizer.tokenize(marker) for marker in markers] == [[marker] for marker in markers]
    assert tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(markers)
    assert tokenizer.tokenize("(E)") == ["<unk>"] * 3  # no fifth option, and no bracket stands alone


def test_training_is_deterministic_and_survives_save_and_load(tmp_path):
    first, second = train_tokenizer(), train_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    first.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<s><|user|><image>which shape is red?<|end|><|assistant|>star</s>"
    assert loaded(text)["input_ids"] == first(text)["input_ids"]
    assert loaded.decode(loaded("white circle (B)")["input_ids"]) == "white circle (B)"
