"""The quickstart study: does Modality-Mutual Attention beat causal attention on a tiny AKI, honestly measured?

A short driver over the public recipes. For every visual token budget and seed it runs the preset's stage
configs (:mod:`aki.quickstart.presets`) with :func:`aki.train.run`, the path a user takes by hand:

1. writes the synthetic spatial-VQA data once (:mod:`aki.data.synthetic`): training questions, their scenes'
   captions, one file of questions per family, and a test split of ``test_per_family`` questions per family
   from scenes no training sample shows;
2. ``vision``: a fresh tiny AKI whose vision tower alone learns to name what every patch shows;
3. ``pretrain``: captions, causal (captions are RESPONSE), the tower frozen from here on, as in the paper;
4. two arms from that checkpoint, same seed, same data order, differing only in ``model.attention``: causal
   and MMA (``sft_curriculum`` then ``sft``; with ``include_dot`` a third arm trained with the paper's
   dual-order training, causal), side by side, one process and one core each;
5. every final model reloaded (:class:`aki.generation.Runner`) answers every test question greedily; an answer
   is right under normalised exact match (:func:`aki.eval.scorers.answers_match`), the same rule for every arm;
6. ``results.json``, ``accuracy.png``, ``curves.png`` and ``mask.png`` (the MMA mask of one test question).

``stop_after`` ends the study after one of :data:`STOP_STAGES` (the data, the vision tower, pre-training, the
curriculum or the fine-tuning of every arm), with the models made so far and no evaluation: e.g. a seeing,
pre-trained model to fine-tune on your own data (``aki quickstart --stop-after pretrain``).

The models are normal Hugging Face directories: ``pretrained/``, ``causal/`` and ``mma/`` (and ``dot/``) in the
output directory for the first seed and budget, ``runs/latents<K>_seed<S>/`` for the others.

Example:
    >>> results = run_study(StudyOptions(preset=get_preset("smoke"), output_dir=Path("out")))  # doctest: +SKIP
    >>> results["summary"][-1]["mma"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transformers
from PIL import Image

from ..data import synthetic
from ..eval.scorers import answers_match
from ..generation import Prompt, Runner, SamplingParams, default_device
from ..mma import mma_mask
from ..models.aki import AkiProcessor
from ..train import TrainResult, run
from ..viz import save_mask_png
from . import report
from .presets import STOP_STAGES, Preset, get_preset

QUESTION = (
    "Does Modality-Mutual Attention beat causal attention, trained on the same data from the same start?"
)
FAMILIES = [family.value for family in synthetic.Family]
# The longest reference answer ("white circle (B)") is 5 tokens: room for a longer, wrong one to show.
MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class StudyOptions:
    """What to run: a preset, where to write, how many seeds, which visual token budgets, the DOT arm.

    ``latents`` lists the visual token budgets to sweep (empty: the preset's). ``threads`` is torch's CPU
    threads per process (one process per arm); ``workers`` how many arms train at once (None: one per arm,
    at most one per CPU core; 1 trains them one after another in this process). ``data_seed`` fixes the data.
    ``stop_after`` (one of :data:`STOP_STAGES`; None: the whole study) ends it early, without evaluation.
    """

    preset: Preset = field(default_factory=lambda: get_preset("default"))
    output_dir: Path = Path("outputs/quickstart")
    seeds: int = 1
    latents: Sequence[int] = ()
    include_dot: bool = False
    threads: int = 1
    workers: int | None = None
    progress: bool = True
    data_seed: int = 0
    stop_after: str | None = None

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after not in STOP_STAGES:
            raise ValueError(
                f"unknown stage {self.stop_after!r} to stop after; expected one of {list(STOP_STAGES)}"
            )
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if any(k < 1 for k in self.latents):
            raise ValueError(f"visual token budgets must be >= 1, got {list(self.latents)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def budgets(self) -> list[int]:
        default = self.preset.config("vision").model.builder_args["num_latents"]
        return list(dict.fromkeys(self.latents)) or [default]

    @property
    def arms(self) -> list[str]:
        return ["causal", "mma", "dot"] if self.include_dot else ["causal", "mma"]

    @property
    def parallel_arms(self) -> int:
        return self.workers or max(1, min(len(self.arms), os.cpu_count() or 1))

    @property
    def shared_threads(self) -> int:
        """Threads of the stages all arms share (vision tower, pre-training): the cores the arms then use."""
        return self.threads * self.parallel_arms


class TestQuestion(NamedTuple):
    """One test question as the study scores it."""

    id: str
    family: str
    question: str
    answer: str
    image: Image.Image


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def run_study(options: StudyOptions) -> dict[str, Any]:
    """Run the whole study (see the module docstring); returns the results dict also written as results.json."""
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset, timings = options.preset, _Timings()
    runs, outcomes, stopped = [], {}, {}
    with _quiet_libraries(), _torch_threads(options.shared_threads), _StageProgress(options) as progress:
        with timings("data"):
            progress.start("writing synthetic data", total=1)
            data = write_data(out / "data", preset, seed=options.data_seed)
            test = read_test(data)
            progress.finish()
        if options.stop_after == "data":
            return _stopped(options, {"data": data})
        for latents in options.budgets:
            for seed in range(options.seeds):
                first = (latents, seed) == (options.budgets[0], 0)
                root = out if first else out / "runs" / f"latents{latents}_seed{seed}"
                label = f"seed {seed}, {latents} visual tokens"
                job = ArmJob("", root, preset, seed, latents, data, options.threads, options.stop_after)
                _fresh(job.work)
                with timings("vision"):
                    vision = _stage(job, progress, "vision", f"training the vision tower ({label})")
                if options.stop_after == "vision":
                    stopped[label] = vision.final_dir
                    continue
                with timings("pretrain"):
                    pretrained = _stage(
                        job, progress, "pretrain", f"pre-training ({label})", init=vision.final_dir
                    )
                    _publish(pretrained.final_dir, root / "pretrained")
                if options.stop_after == "pretrain":
                    stopped[label] = root / "pretrained"
                    continue
                arm_jobs = [job._replace(arm=arm) for arm in options.arms]
                with timings("fine_tune_and_evaluate"):
                    for arm, done in zip(
                        options.arms, _run_arms(arm_jobs, options.parallel_arms, progress, label), strict=True
                    ):
                        if done.right is None:  # stopped before the evaluation
                            stopped[f"{label}, {arm}"] = done.model_dir
                            continue
                        outcomes[latents, seed, arm] = _by_family(test, done.right)
                        runs.append(
                            _run_record(
                                latents,
                                seed,
                                done,
                                outcomes[latents, seed, arm],
                                pretrain_losses=pretrained.losses,
                                vision_losses=vision.losses,
                                out=out,
                            )
                        )
        if stopped:
            return _stopped(options, stopped)
        chance = {family: synthetic.chance_level(family) for family in FAMILIES}
        chance[report.OVERALL] = sum(chance.values()) / len(chance)
        results = {
            "schema_version": 2,
            "question": QUESTION,
            "preset": preset.to_dict(),
            "options": {
                "seeds": list(range(options.seeds)),
                "latents": options.budgets,
                "include_dot": options.include_dot,
                "threads": options.threads,
                "parallel_arms": options.parallel_arms,
                "shared_threads": options.shared_threads,
            },
            "data": {
                "train_samples": preset.train_samples,
                "test_samples": len(test),
                "test_per_family": preset.test_per_family,
                "image_size": image_size(preset),
                "data_seed": options.data_seed,
                "directory": "data",
            },
            "families": FAMILIES,
            "chance": chance,
            "arms": options.arms,
            "runs": runs,
            "summary": report.summarise(runs, outcomes, families=FAMILIES, chance=chance, arms=options.arms),
            "interval": _interval_method(options.seeds),
            "timings": {},
            "environment": _environment(options),
            "files": {},
        }
        with timings("report"):
            progress.start("writing results and plots", total=1)
            results["files"] = write_figures(results, out, test[0])
            progress.finish()
    results["timings"] = timings.as_dict()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _stopped(options: StudyOptions, models: dict[str, Path]) -> dict[str, Any]:
    """What a study that stopped early returns (nothing is evaluated, no results.json): where its models are."""
    return {
        "stopped_after": options.stop_after,
        "models": {label: str(path) for label, path in models.items()},
    }


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def image_size(preset: Preset) -> int:
    """The size the study draws its scenes at: the vision tower's input size."""
    return preset.config("vision").model.builder_args["image_size"]


def write_data(directory: Path, preset: Preset, *, seed: int) -> Path:
    """Write the training split (questions and captions), one question file per family (``train_<family>``,
    what fine-tuning reads) and the test split; reuse them if already written with the same settings.
    """
    manifest = {
        "train": preset.train_samples,
        "test": preset.test_per_family * len(FAMILIES),
        "image_size": image_size(preset),
        "seed": seed,
        "per_family": True,
    }
    manifest_file = directory / "manifest.json"
    if manifest_file.is_file() and json.loads(manifest_file.read_text()) == manifest:
        return directory
    _fresh(directory)
    for split in ("train", "test"):
        synthetic.write_split(directory, split, manifest[split], seed=seed, image_size=manifest["image_size"])
    by_family: dict[str, list[str]] = {family: [] for family in FAMILIES}
    for line in (directory / "train.jsonl").read_text().splitlines(keepends=True):
        by_family[json.loads(line)["family"]].append(line)
    for family, lines in by_family.items():
        (directory / f"train_{family}.jsonl").write_text("".join(lines))
    manifest_file.write_text(json.dumps(manifest))
    return directory


def read_test(directory: Path) -> list[TestQuestion]:
    """The test questions of a data directory, images decoded (RGB), in file order."""
    questions = []
    for line in (directory / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        human, answer = (turn["value"] for turn in record["conversations"])
        with Image.open(directory / record["image"]) as image:
            rgb = image.convert("RGB")
        question = human.replace("<image>", "").strip()
        questions.append(TestQuestion(record["id"], record["family"], question, answer, rgb))
    return questions


# --------------------------------------------------------------------------------------------------
# Training: the preset's stage configs, run by the public recipes
# --------------------------------------------------------------------------------------------------


class Stage(NamedTuple):
    """One recipe run of an arm: its directory name, the preset's stage config, and what it overrides."""

    name: str
    config: str  # one of presets.STAGES
    overrides: tuple[str, ...] = ()


class ArmJob(NamedTuple):
    """One arm of one (budget, seed), or with ``arm == ""`` the stages the arms share."""

    arm: str
    root: Path
    preset: Preset
    seed: int
    latents: int
    data: Path
    threads: int = 1
    stop_after: str | None = None  # one of STOP_STAGES

    @property
    def work(self) -> Path:
        return self.root / "work"

    def overrides(self, stage: Stage, init: Path | None) -> list[str]:
        """What the study sets in every stage config: where it writes, what it reads and starts from."""
        common = [
            f"output_dir={self.work / stage.name}",
            f"seed={self.seed}",
            f"data.root={self.data}",
            f"model.builder_args.num_latents={self.latents}",
        ]
        return [*common, *([] if init is None else [f"model.init={init}"]), *stage.overrides]


def training_plan(arm: str, preset: Preset) -> list[Stage]:
    """The recipe runs of one arm, each starting from the previous one's final model.

    ``causal`` and ``mma`` fine-tune the shared pre-trained model: the curriculum, then every family.
    ``dot`` (the paper's dual-order training, causal) starts from the vision stage's model and pre-trains
    itself, half of the steps text first, then image first; then it fine-tunes in as many steps as the
    others, the curriculum first and the rest half text first, half image first.
    """
    if arm != "dot":
        attention = (f"model.attention={arm}",)
        return [
            Stage(f"sft_{arm}_curriculum", "sft_curriculum", attention),
            Stage(f"sft_{arm}", "sft", attention),
        ]
    causal = ("model.attention=causal",)

    def halves(stage: str, prefix: str, last: str) -> list[Stage]:
        config = preset.config(stage)
        first = max(config.steps // 2, 1)
        parts = [
            (f"{prefix}_text_first", "text_first", first),
            (last, "image_first", max(config.steps - first, 1)),
        ]
        return [
            Stage(name, stage, (*causal, f"steps={steps}", f"data.order={order}", _warmup(config, steps)))
            for name, order, steps in parts
        ]

    return [
        *halves("pretrain", "dot_pretrain", "dot_pretrain_image_first"),
        Stage("sft_dot_curriculum", "sft_curriculum", causal),
        *halves("sft", "sft_dot", "sft_dot"),
    ]


def _warmup(config: Any, steps: int) -> str:
    """A stage cut to ``steps`` warms up for at most a quarter of them."""
    return f"optim.warmup_steps={min(config.optim.warmup_steps, steps // 4)}"


def _stage(
    job: ArmJob, progress: _StageProgress | None, stage: str, title: str, init: Path | None = None
) -> TrainResult:
    """Run one of the stages the arms share, with a progress bar fed by its history file."""
    plan = Stage(stage, stage)
    config = job.preset.config(stage, job.overrides(plan, init))
    progress.start(title, total=config.steps)
    with _follow_each({"": [job.work / stage / "history.jsonl"]}, progress.advance):
        result = _run(config, job.work)
    progress.finish()
    return result


def _run(config: Any, work: Path) -> TrainResult:
    """One recipe run; its printed summary goes to ``work/train.log``, its resumable state is dropped."""
    with _log_to(work / "train.log"):
        result = run(config)
    if result.final_dir is None:
        raise RuntimeError(f"the run in {config.output_dir} stopped at step {result.steps} of {config.steps}")
    shutil.rmtree(Path(config.output_dir) / "checkpoints", ignore_errors=True)
    return result


class ArmResult(NamedTuple):
    """What :func:`run_arm` returns: the model directory, losses, seconds and whether each test answer was right."""

    arm: str
    model_dir: Path
    losses: list[float]
    pretrain_losses: list[float] | None  # the DOT arm's own pre-training; None: the shared one
    train_seconds: float
    eval_seconds: float
    right: list[bool] | None  # None: the study stopped before evaluating


def run_arm(job: ArmJob) -> ArmResult:
    """Fine-tune one arm by its :func:`training_plan`, copy its final model to ``root/<arm>``, reload it and
    answer the test split (with ``job.stop_after``, only the plan's stages up to that one, and no answers).
    """
    with _quiet_libraries(), _torch_threads(job.threads):
        started = time.perf_counter()
        init = job.work / "vision" / "final" if job.arm == "dot" else job.root / "pretrained"
        losses: dict[str, list[float]] = {"pretrain": [], "sft": []}
        for stage in _plan_until(training_plan(job.arm, job.preset), job.stop_after):
            config = job.preset.config(stage.config, job.overrides(stage, init))
            result = _run(config, job.work)
            losses[config.stage] += result.losses
            init = result.final_dir
        train_seconds = time.perf_counter() - started
        if job.stop_after == "sft_curriculum":
            return ArmResult(
                job.arm, init, losses["sft"], losses["pretrain"] or None, train_seconds, 0.0, None
            )
        model_dir = job.root / job.arm
        _publish(init, model_dir)
        if job.stop_after == "sft":
            return ArmResult(
                job.arm, model_dir, losses["sft"], losses["pretrain"] or None, train_seconds, 0.0, None
            )
        started = time.perf_counter()
        with (job.work / f"eval_{job.arm}.progress").open("a") as tick:
            right = evaluate(
                model_dir,
                read_test(job.data),
                batch_size=job.preset.eval_batch_size,
                on_batch=lambda n: (tick.write(".\n"), tick.flush()),
            )
    return ArmResult(
        job.arm,
        model_dir,
        losses["sft"],
        losses["pretrain"] or None,
        train_seconds,
        time.perf_counter() - started,
        right,
    )


def _plan_until(plan: list[Stage], stop_after: str | None) -> list[Stage]:
    """The plan up to its last stage of config ``stop_after`` (the whole plan if it has none)."""
    last = max((i for i, stage in enumerate(plan) if stage.config == stop_after), default=len(plan) - 1)
    return plan[: last + 1]


def _run_arms(jobs: list[ArmJob], workers: int, progress: _StageProgress, label: str) -> list[ArmResult]:
    """Run the arms, ``workers`` at a time in separate processes (1: here, one after another)."""
    test_size = sum(1 for _ in (jobs[0].data / "test.jsonl").open())
    files = {}
    for job in jobs:
        plan = _plan_until(training_plan(job.arm, job.preset), job.stop_after)
        steps = sum(job.preset.config(stage.config, stage.overrides).steps for stage in plan)
        batches = 0 if job.stop_after else -(-test_size // job.preset.eval_batch_size)
        progress.start(f"{_ARM_TITLES[job.arm]} + evaluation ({label})", total=steps + batches, key=job.arm)
        files[job.arm] = [
            *(job.work / s.name / "history.jsonl" for s in plan),
            job.work / f"eval_{job.arm}.progress",
        ]
    with _follow_each(files, progress.advance):
        if workers == 1:
            results = [run_arm(job) for job in jobs]
        else:
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                results = list(pool.map(run_arm, jobs))
    for job in jobs:
        progress.finish(key=job.arm)
    return results


_ARM_TITLES = {"causal": "fine-tuning causal", "mma": "fine-tuning MMA", "dot": "DOT training"}


def _publish(final_dir: Path, target: Path) -> None:
    """Copy a run's final model directory to where the study shows it (replacing an older one)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(final_dir, target)


def _fresh(directory: Path) -> Path:
    """An empty directory (the study's own: what was there from an earlier run is removed)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def evaluate(
    model_dir: Path,
    test: Sequence[TestQuestion],
    *,
    batch_size: int,
    on_batch: Callable[[int], Any] | None = None,
) -> list[bool]:
    """Reload a saved model and answer every test question greedily; whether each answer is right.

    The saved ``use_mma`` decides the attention. The answers are written to ``test_predictions.jsonl``.
    """
    runner = Runner.from_pretrained(model_dir, batch_size=batch_size)
    prompts = [Prompt(question.question, [question.image]) for question in test]
    answers = runner.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS), on_batch=on_batch)
    records = [
        {"id": q.id, "family": q.family, "answer": q.answer, "prediction": a}
        for q, a in zip(test, answers, strict=True)
    ]
    (model_dir / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [answers_match(a, q.answer) for q, a in zip(test, answers, strict=True)]


def _by_family(test: Sequence[TestQuestion], right: Sequence[bool]) -> dict[str, list[bool]]:
    outcome: dict[str, list[bool]] = {family: [] for family in FAMILIES}
    for question, correct in zip(test, right, strict=True):
        outcome[question.family].append(correct)
    outcome[report.OVERALL] = list(right)
    return outcome


def _run_record(
    latents: int,
    seed: int,
    done: ArmResult,
    outcome: dict[str, list[bool]],
    *,
    pretrain_losses: list[float],
    vision_losses: list[float],
    out: Path,
) -> dict[str, Any]:
    return {
        "latents": latents,
        "seed": seed,
        "arm": done.arm,
        "accuracy": {family: sum(right) / len(right) for family, right in outcome.items()},
        "correct": {family: sum(right) for family, right in outcome.items()},
        "total": {family: len(right) for family, right in outcome.items()},
        "losses": [round(loss, 5) for loss in done.losses],
        "pretrain_losses": [round(loss, 5) for loss in (done.pretrain_losses or pretrain_losses)],
        "vision_losses": [round(loss, 5) for loss in vision_losses],
        "train_seconds": round(done.train_seconds, 2),
        "eval_seconds": round(done.eval_seconds, 2),
        "model_dir": str(done.model_dir.relative_to(out)),
    }


def _interval_method(seeds: int) -> str:
    if seeds == 1:
        return (
            "one seed: Wilson interval over the test questions for accuracies, normal interval of the paired "
            "per-question differences for deltas (test-set noise only, not training noise)"
        )
    return f"Student-t interval over {seeds} seeds (deltas paired per seed: same pre-training and data order)"


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def write_figures(results: dict[str, Any], out: Path, sample: TestQuestion) -> dict[str, str]:
    """accuracy.png, curves.png and mask.png (the MMA mask of ``sample`` with its answer); relative paths."""
    report.plot_accuracy(results, out / "accuracy.png")
    report.plot_curves(results, out / "curves.png")
    save_sample_mask(out / "mma", sample, out / "mask.png")
    return {
        "results": "results.json",
        "accuracy_plot": "accuracy.png",
        "curves_plot": "curves.png",
        "mask_plot": "mask.png",
        "data": "data",
        "pretrained": "pretrained",
        **{arm: arm for arm in results["arms"]},
    }


def save_sample_mask(model_dir: Path, sample: TestQuestion, path: Path) -> Path:
    """The MMA mask of one test conversation (prompt and answer) as the MMA model's processor marks it."""
    processor = AkiProcessor.from_pretrained(model_dir)
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]},
        {"role": "assistant", "content": sample.answer},
    ]
    batch = processor(images=[sample.image], text=processor.apply_chat_template(chat))
    roles = batch["mma_roles"]  # (1, L)
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    title = f"MMA mask of a test question: {sample.question.splitlines()[0]}"
    return save_mask_png(mma_mask(roles)[0, 0], roles[0], path, title=title, tokens=tokens)


# --------------------------------------------------------------------------------------------------
# Progress, logs, threads, timings
# --------------------------------------------------------------------------------------------------


class _StageProgress:
    """Rich progress bars: one for the whole study (stages done), one per running stage (steps or batches)."""

    def __init__(self, options: StudyOptions) -> None:
        runs = options.seeds * len(options.budgets)
        # data, then vision, pre-training and the arms of each run, then the report (unless stopped early)
        per_run = {"data": 0, "vision": 1, "pretrain": 2}.get(options.stop_after, 2 + len(options.arms))
        self.total_stages = 1 + runs * per_run + (options.stop_after is None)
        self.enabled = options.progress
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _StageProgress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not self.enabled,
        )
        self.bars.__enter__()
        self.overall = self.bars.add_task("aki quickstart", total=self.total_stages)
        return self

    def start(self, description: str, *, total: int, key: str = "") -> None:
        self.tasks[key] = self.bars.add_task(f"  {description}", total=total)

    def advance(self, amount: int = 1, key: str = "") -> None:
        self.bars.advance(self.tasks[key], amount)

    def finish(self, key: str = "") -> None:
        self.bars.remove_task(self.tasks.pop(key))
        self.bars.advance(self.overall)

    def __exit__(self, *exc_info: Any) -> None:
        self.bars.__exit__(*exc_info)


@contextlib.contextmanager
def _follow_each(
    files: dict[str, list[Path]], advance: Callable[..., Any], *, every_s: float = 0.25
) -> Iterator[None]:
    """Advance the progress task of each key by the lines appended to its files, from a polling thread.

    Every recipe appends one line per step to its history.jsonl and evaluation one per batch, also when they
    run in other processes.
    """
    stop = threading.Event()
    seen = dict.fromkeys(files, 0)

    def poll() -> None:
        while True:
            stopping = stop.wait(every_s)
            for key, paths in files.items():
                lines = sum(path.read_bytes().count(b"\n") for path in paths if path.is_file())
                if lines > seen[key]:
                    advance(lines - seen[key], key=key)
                    seen[key] = lines
            if stopping:
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send what the recipes print (their summaries) to a log file instead of the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log, contextlib.redirect_stdout(log):
        yield


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """No transformers progress bars or info messages while the study draws its own progress."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Timings:
    """Wall seconds per stage name (summed over seeds and budgets), plus the total since creation."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {**{name: round(s, 2) for name, s in self.seconds.items()}, "total": round(total, 2)}


def _environment(options: StudyOptions) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads_per_process": options.threads,
        "parallel_arms": options.parallel_arms,
        "cpu_count": os.cpu_count(),
        "device": default_device(),
    }


__all__ = [
    "FAMILIES",
    "QUESTION",
    "STOP_STAGES",
    "ArmJob",
    "ArmResult",
    "Stage",
    "StudyOptions",
    "TestQuestion",
    "evaluate",
    "read_test",
    "run_arm",
    "run_study",
    "save_sample_mask",
    "training_plan",
    "write_data",
]
