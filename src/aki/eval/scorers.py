"""Offline scorers for the paper's benchmarks (CV-Bench, POPE, MME, MMBench) and for free-form VQA files.

Each scorer takes predictions (``{id: generated text}``) and the benchmark's answer rows, and returns
one results dict of the same shape for every benchmark (written as JSON by ``aki eval score``)::

    {
      "benchmark": "pope",                     # cvbench | pope | mme | mmbench | vqa
      "metrics": {"random/f1": 0.75, ...},     # name -> float
      "counts": {"answers": 12, "predictions": 12, "correct": 8,
                 "malformed": 1, "missing": 1, "extra": 1, ...},   # name -> int
      "malformed": {"7": "not_yes_no"},        # answer id -> problem, scored wrong
      "missing": ["12"],                       # answer ids without a prediction, scored wrong
      "extra": ["99"],                         # prediction ids not in the answers, ignored
      "outcomes": {"1": true, ...}             # answer id -> right or wrong (what a paired comparison reads)
    }

Free-form results (``vqa``) also hold ``"categories"`` (answer id -> category) when the rows have one.

Rates (accuracy, precision, ...) are fractions in [0, 1]; MME scores are points as the benchmark defines
them (0-200 per subtask). Metrics:

- ``cvbench``: option-letter exact match. ``source/<ADE20K|COCO|Omni3D>`` and ``task/<task>`` accuracies,
  ``2d`` = mean(ADE20K, COCO), ``3d`` = Omni3D, ``overall`` = mean(2d, 3d); a source absent from the
  answers is left out of its mean.
- ``pope``: ``<split>/accuracy|precision|recall|f1|yes_ratio`` per split (``category``: random, popular,
  adversarial; a comma-separated category counts in each of its splits) and ``all/...`` over every row.
  ``all/f1`` is what VLMEvalKit reports as POPE "Overall". As in VLMEvalKit, a malformed or missing
  prediction is wrong for accuracy and "not yes" for the rest: recall = tp / (rows answered yes),
  precision = tp / (predicted yes), yes_ratio = (predicted yes) / rows.
- ``mme``: per subtask ``<subtask>/acc`` (per question), ``<subtask>/acc_plus`` (per image: every
  question of the image right) and ``<subtask>/score`` = 100 * (acc + acc_plus); ``perception`` and
  ``cognition`` sum the scores of their subtasks present in the answers.
- ``mmbench``: circular evaluation. ``overall`` = fraction of circular groups whose every row (every
  rotation of the options) is right; ``category/<name>`` and ``l2-category/<name>`` the same per category;
  ``row_accuracy`` is the plain per-row accuracy, for diagnosis.
- ``vqa``: free-form answers. ``normalised_match`` (:func:`answers_match`: case, surrounding punctuation and
  spaces ignored; a row is right under it) and ``exact_match`` (the answer as written, surrounding spaces
  stripped); with a category column (``category`` unless told otherwise), both per category as
  ``category/<name>/normalised_match`` and ``category/<name>/exact_match``. An empty prediction is wrong and
  listed as malformed (``empty``). Rows are LLaVA records (the reference is the last assistant turn) or flat
  ``{"id", "question", "answer"}`` rows (:func:`vqa_rows`).

File formats. Answers are the benchmarks' public rows, read from JSON (a list of objects), JSON lines,
TSV (VLMEvalKit files) or parquet (only if pandas is installed; it is not a dependency). Columns used:
CV-Bench ``choices`` (list), ``answer`` "(A)", ``source``, ``task``; free-form ``answer`` (or LLaVA
``conversations``) and a category; POPE ``answer`` yes/no,
``category``; MME ``answer`` Yes/No, ``category`` (subtask), and the image (first of ``image_path``,
``question_id``, ``image`` that is a string); MMBench option columns ``A``..``H`` (empty = absent),
``answer`` letter, ``category``, ``l2-category``, and the circular group: ``g_index`` or
``circular_index`` if present, else ``index % 1_000_000`` (the public dev set stores rotation k of
question i at index ``i + k * 1_000_000``). Every answer row gets the id of its first column among
``id``, ``index``, ``idx``, ``question_id``; ids that repeat get ``#0``, ``#1``, ... in file order
(lmms-lab's MME gives both questions of an image the image's name as ``question_id``:
``code_reasoning/0020.png#0`` and ``#1``). :func:`assign_ids` is the one rule; ``aki eval run`` writes
predictions under these ids. Predictions are JSON lines (or a JSON list) of ``{"id", "prediction"}``;
``question_id`` or ``index`` may stand for ``id`` and ``text`` or ``answer`` for ``prediction`` (LLaVA
answer files). Ids compare as strings, so ``3`` and ``"3"`` match.

Parsing predictions, never a crash: see :func:`extract_choice` and :func:`extract_yes_no`. Anything they
cannot parse is counted wrong and listed under ``malformed``. The yes/no rule is stricter than the
references: POPE's script reads anything without "no"/"not" in the first sentence as yes, VLMEvalKit
reads "yes" xor "no" anywhere; here the first word must be yes or no, so a verbose answer shows up as
malformed instead of being guessed.

Example:
    >>> answers = [{"question_id": 1, "answer": "yes", "category": "random"}]
    >>> score("pope", {1: "Yes."}, answers)["metrics"]["random/accuracy"]
    1.0
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple

from ..io import read_records
from .stats import paired_interval

__all__ = [
    "BENCHMARKS",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "MetricComparison",
    "PairedDifference",
    "Parsed",
    "answers_match",
    "assign_ids",
    "benchmark_name",
    "compare_results",
    "cvbench_choices",
    "extract_choice",
    "extract_yes_no",
    "is_blank",
    "load_results",
    "normalise_answer",
    "paired_differences",
    "predictions_from_records",
    "read_predictions",
    "score",
    "score_cvbench",
    "score_files",
    "score_mmbench",
    "score_mme",
    "score_pope",
    "score_vqa",
    "vqa_rows",
    "write_results",
]

BENCHMARKS = ("cvbench", "pope", "mme", "mmbench", "vqa")
POPE_SPLITS = ("random", "popular", "adversarial")
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MMBENCH_CIRCULAR_PERIOD = 1_000_000

ANSWER_ID_COLUMNS = ("id", "index", "idx", "question_id")
PREDICTION_ID_KEYS = ("id", "question_id", "index")
PREDICTION_TEXT_KEYS = ("prediction", "text", "answer")
MME_IMAGE_COLUMNS = ("image_path", "question_id", "image")
MMBENCH_OPTION_COLUMNS = "ABCDEFGH"

NO_LETTER = "no_letter"
SEVERAL_LETTERS = "several_letters"
NOT_YES_NO = "not_yes_no"
EMPTY = "empty"
ANSWER_SPEAKERS = ("gpt", "assistant")  # LLaVA's name of the answering turn, and the chat one

Row = dict[str, Any]


class Parsed(NamedTuple):
    """A parsed prediction: ``value`` (a letter, "yes" or "no") or a ``problem`` code, never both."""

    value: str | None
    problem: str | None


class MetricComparison(NamedTuple):
    """One metric of two results; a value is None when that result lacks the metric."""

    name: str
    a: float | None
    b: float | None
    difference: float | None  # b - a


class PairedDifference(NamedTuple):
    """Accuracy of two results on the same questions and ``b - a`` with its 95 % paired interval."""

    name: str  # "all", or "category/<name>"
    questions: int
    a: float
    b: float
    difference: float
    low: float
    high: float


# ----------------------------------------------------------------------------- parsing predictions

_WRAPPING = " \t\r\n.:;,!?()[]{}<>*\"'`"
_LETTER_WORD = re.compile(r"[A-Za-z]+")
_LOWER_WORD = re.compile(r"[a-z]+")


def extract_choice(text: str, *, letters: str = "ABCD") -> Parsed:
    """Read one option letter out of ``text``, allowing only ``letters``.

    A text that is a single letter once wrapping punctuation is stripped ("b", "(B)", "B.", "**B**")
    is that letter, in any case. Otherwise every word written in capitals and made only of allowed
    letters counts: "The answer is B", "B) cat" and "Answer: (B)" give B; "A and C" and "AB" name several
    letters (``several_letters``); "cat", "" and an out-of-range "E" name none (``no_letter``). A
    repeated letter ("B. B is right") is one letter. Lowercase letters inside a sentence do not count,
    and neither does option text: only letters are matched.

    Example:
        >>> extract_choice("The answer is (C).")
        Parsed(value='C', problem=None)
    """
    bare = text.strip(_WRAPPING)
    if len(bare) == 1 and bare.upper() in letters:
        return Parsed(bare.upper(), None)
    allowed = set(letters)
    found = {
        letter
        for word in _LETTER_WORD.findall(text)
        if word.isupper() and set(word) <= allowed
        for letter in word
    }
    if len(found) == 1:
        return Parsed(found.pop(), None)
    return Parsed(None, SEVERAL_LETTERS if found else NO_LETTER)


def extract_yes_no(text: str) -> Parsed:
    """Read yes or no from the first word of ``text`` (case-insensitive, punctuation stripped).

    "Yes.", "no, there is none" and "YES" parse; "There is no dog", "Yesterday" and "" do not
    (``not_yes_no``).

    Example:
        >>> extract_yes_no("No, there is no cat.")
        Parsed(value='no', problem=None)
    """
    words = _LOWER_WORD.findall(text.lower())
    if words and words[0] in ("yes", "no"):
        return Parsed(words[0], None)
    return Parsed(None, NOT_YES_NO)


_ANSWER_PUNCTUATION = " \t\r\n.,;:!?\"'"


def normalise_answer(text: str) -> str:
    """A free-form answer as exact match compares it: lower case, surrounding punctuation (not brackets) and
    spaces stripped, inner spaces collapsed.

    Example:
        >>> normalise_answer(" Right (B).")
        'right (b)'
    """
    return " ".join(text.strip(_ANSWER_PUNCTUATION).lower().split())


def answers_match(prediction: str, answer: str) -> bool:
    """Normalised exact match (:func:`normalise_answer`) of a free-form prediction and its reference."""
    return normalise_answer(prediction) == normalise_answer(answer)


# ----------------------------------------------------------------------------- reading files


def read_predictions(path: str | Path) -> dict[str, str]:
    """Read a predictions file into ``{id: text}``; see :func:`predictions_from_records`."""
    return predictions_from_records(read_records(path), source=str(path))


def predictions_from_records(records: Iterable[Row], *, source: str = "predictions") -> dict[str, str]:
    """Map prediction records to ``{id: text}``.

    The id is the first of ``id``, ``question_id``, ``index`` and the text the first of
    ``prediction``, ``text``, ``answer``; a null text becomes "" (malformed when scored). A record
    without either key, or an id given twice, raises ValueError: the file, not the model, is wrong.
    """
    predictions: dict[str, str] = {}
    duplicates: list[str] = []
    for number, record in enumerate(records, start=1):
        id_key = next((key for key in PREDICTION_ID_KEYS if key in record), None)
        text_key = next((key for key in PREDICTION_TEXT_KEYS if key in record), None)
        if id_key is None or text_key is None:
            raise ValueError(
                f"{source}: record {number} needs an id key (one of {', '.join(PREDICTION_ID_KEYS)}) and "
                f"a text key (one of {', '.join(PREDICTION_TEXT_KEYS)}); it has {sorted(record)}"
            )
        prediction_id = _as_id(record[id_key])
        if prediction_id in predictions:
            duplicates.append(prediction_id)
        text = record[text_key]
        predictions[prediction_id] = "" if text is None else str(text)
    if duplicates:
        raise ValueError(f"{source}: {len(duplicates)} duplicate prediction ids, first {duplicates[:5]}")
    return predictions


def assign_ids(answers: Iterable[Row]) -> list[Row]:
    """Return copies of the answer rows, each with a unique string ``id``.

    The id comes from the first column among ``id``, ``index``, ``idx``, ``question_id`` that the
    first row has; ids that occur more than once get ``#0``, ``#1``, ... in file order. Applying it
    twice changes nothing.
    """
    rows = [dict(row) for row in answers]
    if not rows:
        return rows
    column = next((name for name in ANSWER_ID_COLUMNS if name in rows[0]), None)
    if column is None:
        raise ValueError(f"answer rows need an id column (one of {ANSWER_ID_COLUMNS}); got {sorted(rows[0])}")
    ids = []
    for number, row in enumerate(rows, start=1):
        if is_blank(row.get(column)):
            raise ValueError(f"answer row {number} has no {column!r}")
        ids.append(_as_id(row[column]))
    totals: dict[str, int] = defaultdict(int)
    for row_id in ids:
        totals[row_id] += 1
    seen: dict[str, int] = defaultdict(int)
    for row, row_id in zip(rows, ids, strict=True):
        row["id"] = f"{row_id}#{seen[row_id]}" if totals[row_id] > 1 else row_id
        seen[row_id] += 1
    return rows


def _as_id(value: Any) -> str:
    """Ids compare as strings; integral floats (pandas turns int columns with gaps into floats) lose ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Integral):
        return str(int(value))
    return str(value)


def is_blank(value: Any) -> bool:
    """None, "", whitespace or NaN: how an absent option or field appears in JSON, TSV and parquet."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _field(row: Row, column: str) -> Any:
    if is_blank(row.get(column)):
        raise ValueError(f"answer row {row['id']!r} has no {column!r}")
    return row[column]


# ----------------------------------------------------------------------------- judging


class _Judged(NamedTuple):
    """One answer row with its expected and predicted value (None when missing or malformed)."""

    row: Row
    expected: str
    predicted: str | None
    correct: bool


class _Judgement(NamedTuple):
    items: list[_Judged]
    malformed: dict[str, str]
    missing: list[str]
    extra: list[str]
    predictions: int


def _judge(
    predictions: Mapping[Any, Any],
    answers: Iterable[Row],
    *,
    expected: Callable[[Row], str],
    parse: Callable[[str, Row], Parsed],
) -> _Judgement:
    rows = assign_ids(answers)
    if not rows:
        raise ValueError("no answer rows to score")
    texts = {_as_id(key): "" if value is None else str(value) for key, value in predictions.items()}
    items, malformed, missing = [], {}, []
    for row in rows:
        truth = expected(row)
        text = texts.get(row["id"])
        if text is None:
            missing.append(row["id"])
            items.append(_Judged(row, truth, None, False))
            continue
        parsed = parse(text, row)
        if parsed.problem is not None:
            malformed[row["id"]] = parsed.problem
        items.append(_Judged(row, truth, parsed.value, parsed.value == truth))
    answer_ids = {row["id"] for row in rows}
    extra = sorted((key for key in texts if key not in answer_ids), key=_natural_key)
    return _Judgement(items, malformed, missing, extra, len(texts))


def _judge_letters(
    predictions: Mapping[Any, Any], answers: Iterable[Row], *, letters: Callable[[Row], str]
) -> _Judgement:
    """Multiple choice: answer and prediction are one of the row's option ``letters``."""
    return _judge(
        predictions,
        answers,
        expected=lambda row: _answer_letter(row, letters(row)),
        parse=lambda text, row: extract_choice(text, letters=letters(row)),
    )


def _judge_yes_no(predictions: Mapping[Any, Any], answers: Iterable[Row]) -> _Judgement:
    return _judge(predictions, answers, expected=_yes_no_answer, parse=lambda text, row: extract_yes_no(text))


def _natural_key(value: str) -> tuple[int, int, str]:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _result(
    benchmark: str, judgement: _Judgement, metrics: dict[str, float], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "metrics": metrics,
        "counts": {
            "answers": len(judgement.items),
            "predictions": judgement.predictions,
            "correct": sum(item.correct for item in judgement.items),
            "malformed": len(judgement.malformed),
            "missing": len(judgement.missing),
            "extra": len(judgement.extra),
            **counts,
        },
        "malformed": judgement.malformed,
        "missing": judgement.missing,
        "extra": judgement.extra,
        "outcomes": {item.row["id"]: item.correct for item in judgement.items},
    }


def _accuracy(items: list[_Judged]) -> float:
    return sum(item.correct for item in items) / len(items)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _grouped(items: Iterable[_Judged], key: Callable[[_Judged], str]) -> dict[str, list[_Judged]]:
    groups: dict[str, list[_Judged]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


def _answer_letter(row: Row, letters: str) -> str:
    letter = str(_field(row, "answer")).strip().strip("()").strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise ValueError(
            f"answer row {row['id']!r}: answer {row['answer']!r} is not one of the options {letters}"
        )
    return letter


def _yes_no_answer(row: Row) -> str:
    answer = str(_field(row, "answer")).strip().lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"answer row {row['id']!r}: answer {row['answer']!r} is not yes or no")
    return answer


# ----------------------------------------------------------------------------- CV-Bench


def cvbench_choices(row: Row) -> Sequence[Any]:
    """The row's ``choices``: a list (JSON), an array (parquet) or JSON text (TSV)."""
    choices = _field(row, "choices")
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError as error:
            raise ValueError(f"answer row {row['id']!r}: choices {choices!r} is not a JSON list") from error
    return choices


def _cvbench_letters(row: Row) -> str:
    return string.ascii_uppercase[: len(cvbench_choices(row))]


def score_cvbench(predictions: Mapping[Any, Any], answers: Iterable[Row]) -> dict[str, Any]:
    """Score CV-Bench: option-letter accuracy per source and task; 2d, 3d and overall as the paper."""
    judgement = _judge_letters(predictions, answers, letters=_cvbench_letters)
    by_source = _grouped(judgement.items, lambda item: str(_field(item.row, "source")))
    by_task = _grouped(judgement.items, lambda item: str(item.row.get("task") or "unknown"))
    source_accuracy = {name: _accuracy(items) for name, items in sorted(by_source.items())}
    lowered = {name.lower(): value for name, value in source_accuracy.items()}

    metrics: dict[str, float] = {}
    two_d = [lowered[name] for name in ("ade20k", "coco") if name in lowered]
    if two_d:
        metrics["2d"] = sum(two_d) / len(two_d)
    if "omni3d" in lowered:
        metrics["3d"] = lowered["omni3d"]
    if "2d" in metrics and "3d" in metrics:
        metrics["overall"] = (metrics["2d"] + metrics["3d"]) / 2
    metrics.update({f"source/{name}": value for name, value in source_accuracy.items()})
    metrics.update({f"task/{name}": _accuracy(items) for name, items in sorted(by_task.items())})
    counts = {f"source/{name}": len(items) for name, items in sorted(by_source.items())}
    return _result("cvbench", judgement, metrics, counts)


# ----------------------------------------------------------------------------- POPE


def _pope_splits(row: Row) -> list[str]:
    category = row.get("category")
    if is_blank(category):
        return []
    return [split.strip() for split in str(category).split(",") if split.strip()]


def _binary_metrics(items: list[_Judged]) -> tuple[dict[str, float], dict[str, int]]:
    tp = sum(item.expected == "yes" and item.predicted == "yes" for item in items)
    fp = sum(item.expected == "no" and item.predicted == "yes" for item in items)
    tn = sum(item.expected == "no" and item.predicted == "no" for item in items)
    fn = sum(item.expected == "yes" and item.predicted != "yes" for item in items)  # no, malformed, missing
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    metrics = {
        "accuracy": (tp + tn) / len(items),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": (tp + fp) / len(items),
    }
    return metrics, {"questions": len(items), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def score_pope(predictions: Mapping[Any, Any], answers: Iterable[Row]) -> dict[str, Any]:
    """Score POPE: accuracy, precision, recall, F1 and yes-ratio per split and over all rows."""
    judgement = _judge_yes_no(predictions, answers)
    by_split: dict[str, list[_Judged]] = defaultdict(list)
    for item in judgement.items:
        for split in _pope_splits(item.row):
            by_split[split].append(item)
    order = [split for split in POPE_SPLITS if split in by_split]
    order += sorted(split for split in by_split if split not in POPE_SPLITS)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, items in [*((split, by_split[split]) for split in order), ("all", judgement.items)]:
        if not items:
            continue
        split_metrics, split_counts = _binary_metrics(items)
        metrics.update({f"{name}/{key}": value for key, value in split_metrics.items()})
        counts.update({f"{name}/{key}": value for key, value in split_counts.items()})
    return _result("pope", judgement, metrics, counts)


# ----------------------------------------------------------------------------- MME


def _mme_image(row: Row) -> str:
    for column in MME_IMAGE_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value
    raise ValueError(f"answer row {row['id']!r} names no image (one of {MME_IMAGE_COLUMNS} as a string)")


def score_mme(predictions: Mapping[Any, Any], answers: Iterable[Row]) -> dict[str, Any]:
    """Score MME: per subtask acc, acc+ and score = 100 * (acc + acc+); perception and cognition sums."""
    judgement = _judge_yes_no(predictions, answers)
    by_subtask = _grouped(judgement.items, lambda item: str(_field(item.row, "category")))
    order = [name for name in (*MME_PERCEPTION, *MME_COGNITION) if name in by_subtask]
    order += sorted(name for name in by_subtask if name not in order)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    scores: dict[str, float] = {}
    for name in order:
        items = by_subtask[name]
        images = _grouped(items, lambda item: _mme_image(item.row))  # within one subtask
        acc = _accuracy(items)
        acc_plus = sum(all(item.correct for item in group) for group in images.values()) / len(images)
        scores[name] = 100 * (acc + acc_plus)
        metrics.update({f"{name}/acc": acc, f"{name}/acc_plus": acc_plus, f"{name}/score": scores[name]})
        counts.update({f"{name}/questions": len(items), f"{name}/images": len(images)})
    summary = {}
    for total, subtasks in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [scores[name] for name in subtasks if name in scores]
        if present:
            summary[total] = sum(present)
    return _result("mme", judgement, {**summary, **metrics}, counts)


# ----------------------------------------------------------------------------- MMBench


def _mmbench_letters(row: Row) -> str:
    letters = "".join(letter for letter in MMBENCH_OPTION_COLUMNS if not is_blank(row.get(letter)))
    if not letters:
        raise ValueError(f"answer row {row['id']!r} has no options (columns {MMBENCH_OPTION_COLUMNS})")
    return letters


def _mmbench_group(row: Row) -> str:
    for column in ("g_index", "circular_index"):
        if not is_blank(row.get(column)):
            return _as_id(row[column])
    return str(int(_field(row, "index")) % MMBENCH_CIRCULAR_PERIOD)


def score_mmbench(predictions: Mapping[Any, Any], answers: Iterable[Row]) -> dict[str, Any]:
    """Score MMBench with circular evaluation: a question counts only if right under every rotation."""
    judgement = _judge_letters(predictions, answers, letters=_mmbench_letters)
    groups = _grouped(judgement.items, lambda item: _mmbench_group(item.row))
    passed = {name: all(item.correct for item in group) for name, group in groups.items()}
    metrics = {
        "overall": sum(passed.values()) / len(groups),
        "row_accuracy": _accuracy(judgement.items),
    }
    for column in ("category", "l2-category"):
        by_category: dict[str, list[bool]] = defaultdict(list)
        for name, group in groups.items():
            category = group[0].row.get(column)
            if not is_blank(category):
                by_category[str(category)].append(passed[name])
        for category, results in sorted(by_category.items()):
            metrics[f"{column}/{category}"] = sum(results) / len(results)
    counts = {"groups": len(groups), "groups_correct": sum(passed.values())}
    return _result("mmbench", judgement, metrics, counts)


# ----------------------------------------------------------------------------- free-form VQA


def vqa_rows(records: Iterable[Row]) -> list[Row]:
    """Answer rows of a free-form VQA file: each record with its ``answer``, the last assistant turn of its LLaVA
    ``conversations`` when it has them (``{"from": "gpt" | "assistant", "value"}``), else its own ``answer``.

    Example:
        >>> turns = [{"from": "human", "value": "<image>\\nwhat is it?"}, {"from": "gpt", "value": "a disc"}]
        >>> vqa_rows([{"id": "q1", "conversations": turns, "category": "shape"}])[0]["answer"]
        'a disc'
    """
    rows = []
    for number, record in enumerate(records, start=1):
        turns = record.get("conversations")
        if turns is None:
            rows.append(dict(record))
            continue
        answers = [t for t in turns if isinstance(t, dict) and t.get("from") in ANSWER_SPEAKERS]
        if not answers or turns[-1] is not answers[-1]:
            raise ValueError(
                f"record {number} ({record.get('id')!r}): its conversation must end with the answer turn"
            )
        rows.append({**record, "answer": answers[-1]["value"]})
    return rows


def _free_form(text: str, row: Row) -> Parsed:
    return Parsed(normalise_answer(text), None) if text.strip() else Parsed(None, EMPTY)


def score_vqa(
    predictions: Mapping[Any, Any], answers: Iterable[Row], *, category_field: str = "category"
) -> dict[str, Any]:
    """Score free-form answers: normalised and exact match, overall and per ``category_field`` if rows have it."""
    rows = assign_ids(vqa_rows(answers))
    judgement = _judge(
        predictions, rows, expected=lambda row: normalise_answer(str(_field(row, "answer"))), parse=_free_form
    )
    texts = {_as_id(key): "" if value is None else str(value) for key, value in predictions.items()}
    exact = {row["id"]: texts.get(row["id"], "").strip() == str(row["answer"]).strip() for row in rows}
    metrics = {
        "normalised_match": _accuracy(judgement.items),
        "exact_match": sum(exact.values()) / len(rows),
    }
    counts = {"exact_correct": sum(exact.values())}
    categories = {
        row["id"]: str(row[category_field]) for row in rows if not is_blank(row.get(category_field))
    }
    if categories:
        by_category = _grouped(judgement.items, lambda item: categories.get(item.row["id"], "none"))
        for name, items in sorted(by_category.items()):
            metrics[f"category/{name}/normalised_match"] = _accuracy(items)
            metrics[f"category/{name}/exact_match"] = sum(exact[item.row["id"]] for item in items) / len(
                items
            )
            counts[f"category/{name}"] = len(items)
    results = _result("vqa", judgement, metrics, counts)
    if categories:
        results["categories"] = {row["id"]: categories.get(row["id"], "none") for row in rows}
    return results


# ----------------------------------------------------------------------------- entry points

_SCORERS: dict[str, Callable[[Mapping[Any, Any], Iterable[Row]], dict[str, Any]]] = {
    "cvbench": score_cvbench,
    "pope": score_pope,
    "mme": score_mme,
    "mmbench": score_mmbench,
    "vqa": score_vqa,
}


def benchmark_name(benchmark: str) -> str:
    name = benchmark.lower().replace("-", "").replace("_", "")
    if name not in _SCORERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    return name


def score(
    benchmark: str,
    predictions: Mapping[Any, Any],
    answers: Iterable[Row],
    *,
    category_field: str = "category",
) -> dict[str, Any]:
    """Score ``predictions`` (``{id: text}``) against answer rows of ``benchmark`` ("CV-Bench" = "cvbench");
    ``category_field`` is the column free-form results are broken down by.
    """
    name = benchmark_name(benchmark)
    if name == "vqa":
        return score_vqa(predictions, answers, category_field=category_field)
    return _SCORERS[name](predictions, answers)


def score_files(
    benchmark: str, predictions: str | Path, answers: str | Path, *, category_field: str = "category"
) -> dict[str, Any]:
    """Score a predictions file against an answers file; what ``aki eval score`` runs."""
    return score(
        benchmark, read_predictions(predictions), read_records(answers), category_field=category_field
    )


def write_results(results: Mapping[str, Any], path: str | Path) -> None:
    """Write a results dict as indented JSON, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON and check that it has a benchmark name and a ``metrics`` mapping."""
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ValueError(f"{path}: not a results JSON (expected an object with a 'metrics' object)")
    if "benchmark" not in results:
        raise ValueError(f"{path}: results JSON has no 'benchmark'")
    return results


def compare_results(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[MetricComparison]:
    """Pair the metrics of two results of one benchmark: a's metrics in order, then b's extra ones."""
    if a["benchmark"] != b["benchmark"]:
        raise ValueError(
            f"cannot compare results of different benchmarks: {a['benchmark']!r} and {b['benchmark']!r}"
        )
    names = list(a["metrics"]) + [name for name in b["metrics"] if name not in a["metrics"]]
    rows = []
    for name in names:
        value_a, value_b = a["metrics"].get(name), b["metrics"].get(name)
        difference = value_b - value_a if value_a is not None and value_b is not None else None
        rows.append(MetricComparison(name, value_a, value_b, difference))
    return rows


def paired_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[PairedDifference]:
    """``b - a`` on the questions both results answered (their ``outcomes``): over all of them, then per category
    when both are free-form results with the same categories. Empty when either result has no outcomes.

    Example:
        >>> a = {"benchmark": "vqa", "outcomes": {"1": True, "2": False, "3": False, "4": True}}
        >>> b = {"benchmark": "vqa", "outcomes": {"1": True, "2": True, "3": False, "4": True}}
        >>> [round(value, 3) for value in paired_differences(a, b)[0][2:]]
        [0.5, 0.75, 0.25, -0.24, 0.74]
    """
    if a["benchmark"] != b["benchmark"]:
        raise ValueError(
            f"cannot pair results of different benchmarks: {a['benchmark']!r} and {b['benchmark']!r}"
        )
    first, second = a.get("outcomes") or {}, b.get("outcomes") or {}
    common = [question for question in first if question in second]
    if not first or not second:
        return []
    if not common:
        raise ValueError("the two results share no question id: they cannot be paired")
    groups: dict[str, list[str]] = {"all": common}
    categories_a, categories_b = a.get("categories") or {}, b.get("categories") or {}
    if categories_a and categories_b:
        for question in common:
            if categories_a.get(question) != categories_b.get(question):
                raise ValueError(
                    f"question {question!r} has category {categories_a.get(question)!r} in one result "
                    f"and {categories_b.get(question)!r} in the other"
                )
            groups.setdefault(f"category/{categories_a[question]}", []).append(question)
    rows = []
    for name, questions in sorted(groups.items(), key=lambda group: (group[0] != "all", group[0])):
        left, right = [first[q] for q in questions], [second[q] for q in questions]
        difference, low, high = paired_interval(left, right)
        rows.append(
            PairedDifference(
                name, len(questions), sum(left) / len(left), sum(right) / len(right), difference, low, high
            )
        )
    return rows
