"""Words of the training data that the tokenizer does not know: found before training, reported, and with
``model.extend_vocabulary: true`` added to the vocabulary.

A word-level tokenizer (the tiny default's) reads every word it was not trained on as ``<unk>``. Before the first
step, :func:`scan` reads the text of every sample (captions, conversation turns) and counts the pieces the
tokenizer maps to ``<unk>``, and how many samples have one in an answer: those samples are skipped and counted
(:class:`aki.data.encoding.ChatEncoder` refuses an ``<unk>`` label), never trained on. :func:`extend_vocabulary`
adds the words to the tokenizer (new ids after the last one, most frequent first) and grows the embeddings and
the output head by as many rows, initialised from the mean (and a tiny fraction of the covariance) of the
existing rows, so that a new word starts as an average word rather than a random one.

Example:
    >>> found = scan(processor.tokenizer, sources, read_shards=True)  # doctest: +SKIP
    >>> processor = extend_vocabulary(model, processor, found.new_words())  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import synthetic
from ..data.encoding import answer_texts, prompt_texts
from ..data.sources import IndexedSource, RawSample, ShardSource, SyntheticScenes
from ..models.aki import AkiProcessor
from ..models.aki.builders import extend_word_tokenizer, unknown_pieces

# How many of the unknown words a report names.
SHOWN_WORDS = 8


@dataclass
class VocabularyScan:
    """What :func:`scan` found: unknown pieces with their counts, and samples whose answer holds one."""

    words: Counter[str] = field(default_factory=Counter)
    samples: int = 0  # samples whose text was read
    unknown_answers: int = 0  # of those, samples with an unknown piece in an answer (or a caption)
    unread: list[str] = field(default_factory=list)  # sources not read (webdataset shards, unless extending)

    def new_words(self) -> list[str]:
        """The unknown pieces, most frequent first, ties alphabetically (the order their ids are given in)."""
        return sorted(self.words, key=lambda word: (-self.words[word], word))

    def report(self, *, extending: bool) -> str | None:
        """One paragraph for the training log, or None when every word read is known and every source was read."""
        unread = (
            f"the webdataset sources {self.unread} were not scanned for unknown words "
            "(model.extend_vocabulary reads them to the end)"
            if self.unread
            else ""
        )
        if not self.words:
            return unread or None
        shown = ", ".join(f"{word!r} ({self.words[word]}x)" for word in self.new_words()[:SHOWN_WORDS])
        more = f" and {len(self.words) - SHOWN_WORDS} more" if len(self.words) > SHOWN_WORDS else ""
        head = f"the tokenizer does not know {len(self.words)} words of the training data: {shown}{more}"
        if extending:
            return f"{head}; model.extend_vocabulary adds them (embeddings and head grow by {len(self.words)} rows)"
        answers = (
            f"{self.unknown_answers} of {self.samples} samples have one in an answer and are skipped (counted "
            "in skipped_samples, never trained as <unk>); "
            if self.unknown_answers
            else ""
        )
        return (
            f"warning: {head}. {answers}in prompts they are read as <unk>. Set model.extend_vocabulary=true "
            f"to add them to the vocabulary{'; ' + unread if unread else ''}"
        )


def scan(
    tokenizer: Any, sources: Sequence[IndexedSource | ShardSource], *, read_shards: bool
) -> VocabularyScan:
    """Count the pieces of the sources' text that ``tokenizer`` reads as ``<unk>``.

    File sources are read record by record; a synthetic source contributes its vocabulary
    (:func:`aki.data.synthetic.vocabulary`: every word its scenes can say); webdataset shards are read to the end
    only with ``read_shards`` (extending the vocabulary needs every word), else listed in ``unread``.
    """
    found = VocabularyScan()
    samples: list[tuple[list[str], list[str]]] = []  # (prompt texts, answer texts) of each record read
    for source in sources:
        if isinstance(source, SyntheticScenes):
            unknown = _unknown(tokenizer, synthetic.vocabulary())
            found.words.update(piece for pieces in unknown.values() for piece in pieces)
        elif isinstance(source, ShardSource) and not read_shards:
            found.unread.append(source.name)
        else:
            samples += [(prompt_texts(raw), answer_texts(raw)) for raw in _records(source)]
    unknown = _unknown(tokenizer, {text for prompts, answers in samples for text in (*prompts, *answers)})
    for prompts, answers in samples:
        for text in (*prompts, *answers):
            found.words.update(unknown.get(text, ()))
        found.unknown_answers += any(text in unknown for text in answers)
    found.samples = len(samples)
    return found


def extend_vocabulary(model: Any, processor: AkiProcessor, words: Sequence[str]) -> AkiProcessor:
    """Add ``words`` to the processor's word-level tokenizer and grow ``model``'s embeddings and output head to
    the new vocabulary (new rows: mean-initialised, see the module docstring); returns the new processor.
    """
    tokenizer = extend_word_tokenizer(processor.tokenizer, words)
    size = max(len(tokenizer), model.config.get_text_config().vocab_size)
    if size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(size, mean_resizing=True)
    return AkiProcessor(
        processor.image_processor,
        tokenizer,
        chat_template=processor.chat_template,
        num_image_tokens=processor.num_image_tokens,
        image_token=processor.image_token,
        assistant_token=processor.assistant_token,
        turn_tokens=processor.turn_tokens,
        padding_side=processor.padding_side,
    )


def _records(source: IndexedSource | ShardSource) -> Iterator[RawSample]:
    if isinstance(source, ShardSource):
        for shard in range(len(source.shards)):
            yield from source.samples(shard)
    else:
        for index in range(len(source)):
            yield source[index]


def _unknown(tokenizer: Any, texts: Iterable[str]) -> dict[str, list[str]]:
    """The unknown pieces of each text that has any (texts without one are left out); each text encoded once."""
    unique = list(dict.fromkeys(texts))
    return {
        text: pieces for text, pieces in zip(unique, unknown_pieces(tokenizer, unique), strict=True) if pieces
    }


__all__ = ["VocabularyScan", "extend_vocabulary", "scan"]
