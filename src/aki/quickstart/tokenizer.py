"""The quickstart's tokenizer: a word-level model trained offline with `tokenizers` on the synthetic vocabulary.

Text is split into multiple-choice option markers ("(B)", whole), words and punctuation (a ``Split``
pre-tokenizer on :data:`aki.data.synthetic.WORD_PATTERN`, the rule by which :func:`aki.data.synthetic.words`
cuts the vocabulary), so a word is the same token wherever it stands: "red" in
a caption and "red" as an answer right after ``<|assistant|>`` share one id, and what the model learns to write
in captions carries over to its answers. Spaces and newlines are not tokens (the special tokens delimit the
chat template), which keeps sequences short. The training corpus is every word of
:func:`~aki.data.synthetic.vocabulary` and :data:`SYSTEM_MESSAGE`, each of those words one token, any other
word ``<unk>`` (the tiny model knows nothing else). AKI's special tokens are single tokens with the fixed
ids 0-9, then the words follow by frequency in the corpus, ties alphabetically: training is deterministic.

Example:
    >>> tokenizer = train_tokenizer()
    >>> tokenizer.tokenize("which shape is red?")
    ['which', 'shape', 'is', 'red', '?']
    >>> tokenizer.decode(tokenizer("which shape is red?")["input_ids"])
    'which shape is red?'
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..data.synthetic import WORD_PATTERN, vocabulary
from ..models.aki.processing_aki import chat_template

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
# <unk> for unseen characters, then AKI's special tokens (AKI_REFERENCE.md): sequence ends, padding, the image
# placeholder, the end of a pre-training chunk and the chat headers.
SPECIAL_TOKENS = [
    UNK,
    BOS,
    EOS,
    PAD,
    "<image>",
    "<|endofchunk|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]
# The system turn of the tiny model's chat template (:data:`CHAT_TEMPLATE`): empty. AKI's default, 29 words of
# politeness, would be over half of every fine-tuning sample here and cost the CPU study most of its steps;
# the tiny model needs no instruction (every question's form says what answer it wants), and without the
# 9 tokens of "answer with one word, number or letter." fine-tuning ran 17 % faster (measured, 3,600 steps).
SYSTEM_MESSAGE = ""
CHAT_TEMPLATE = chat_template(SYSTEM_MESSAGE)
# An upper bound: every word of the corpus gets a token.
MAX_VOCAB_SIZE = 4096


def tokenizer_corpus(words: Iterable[str] | None = None) -> list[str]:
    """The texts the tokenizer is trained on: the words (the synthetic vocabulary by default) and the
    system message of the quickstart's chat template.
    """
    return [*sorted(set(vocabulary() if words is None else words)), SYSTEM_MESSAGE]


def train_tokenizer(words: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train the word-level tokenizer on :func:`tokenizer_corpus`; a ``PreTrainedTokenizerFast`` with AKI's
    special tokens (``save_pretrained`` and ``AutoTokenizer.from_pretrained`` work as usual).
    """
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN.pattern), behavior="removed", invert=True)
    # Words joined by spaces, "red ?" -> "red?" (WordPiece's cleanup).
    backend.decoder = decoders.WordPiece(cleanup=True)
    trainer = trainers.WordLevelTrainer(
        vocab_size=MAX_VOCAB_SIZE, min_frequency=1, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    backend.train_from_iterator(tokenizer_corpus(words), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=SPECIAL_TOKENS[4:],
        clean_up_tokenization_spaces=False,  # the decoder already joins punctuation
    )


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "SYSTEM_MESSAGE", "tokenizer_corpus", "train_tokenizer"]
