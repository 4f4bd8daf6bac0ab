"""The quickstart study: does Modality-Mutual Attention beat causal attention on a tiny AKI, honestly measured?

One call of :func:`run_study` does the whole run, with nothing downloaded:

1. writes the synthetic spatial-VQA data (:mod:`aki.data.synthetic`): training questions with their scenes'
   captions, and a test split of ``test_per_family`` questions per family (scenes disjoint from training);
2. trains a word-level tokenizer on the synthetic vocabulary (:mod:`aki.quickstart.tokenizer`) and builds a tiny
   AKI (:mod:`aki.quickstart.presets`) with a seeded random initialisation, whose vision tower is then trained
   alone to name what every patch shows (:mod:`aki.quickstart.vision`: the stand-in for a pre-trained SigLIP);
3. pre-trains it on the captions (causal: captions are RESPONSE) with :func:`aki.train.run_pretrain`, the tower
   frozen from here on as in the paper;
4. fine-tunes two models from that checkpoint with :func:`aki.train.run_sft`, same seed, same data order,
   differing only in ``model.attention``: ``causal`` and ``mma`` (with ``include_dot``, a third arm trained with
   the paper's dual-order training, causal); the arms run side by side, one process and one core each;
5. reloads every final model with ``from_pretrained`` and answers every test question by batched greedy
   generation in the chat template; an answer is right if it equals the reference after :func:`normalise`;
6. writes ``results.json``, ``accuracy.png``, ``curves.png`` and ``mask.png`` (the MMA mask of one test sample).

The models are normal Hugging Face directories: ``pretrained/``, ``causal/`` and ``mma/`` (and ``dot/``) in the
output directory for the first seed and visual token budget, ``runs/latents<K>_seed<S>/`` for the others. The
evaluation is fixed before any training and is the same for every arm.

Example:
    >>> results = run_study(StudyOptions(preset=get_preset("smoke"), output_dir=Path("out")))  # doctest: +SKIP
    >>> results["summary"][-1]["mma"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from ..data.config import DataConfig, SourceConfig
from ..generation import Prompt, Runner, SamplingParams, default_device
from ..mma import mma_mask
from ..models.aki import AkiForConditionalGeneration, AkiProcessor, chat_template
from ..train import TrainResult, run_pretrain, run_sft
from ..train.config import CheckpointConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig
from ..viz import save_mask_png
from . import report, vision
from .presets import Preset, build_config, get_preset

QUESTION = (
    "Does Modality-Mutual Attention beat causal attention, trained on the same data from the same start?"
)
FAMILIES = [family.value for family in synthetic.Family]
MAX_LENGTH = 256  # tokens per training sample, images expanded: every synthetic sample fits
# The longest reference answer ("white circle (B)") is 5 tokens: room for a longer, wrong one to show.
MAX_NEW_TOKENS = 8
_PUNCTUATION = " \t\r\n.,;:!?\"'"


@dataclass(frozen=True)
class StudyOptions:
    """What to run: a preset, where to write, how many seeds, which visual token budgets, the DOT arm.

    ``latents`` lists the visual token budgets to sweep (empty: the preset's). ``threads`` is torch's CPU
    threads per process (one process per arm); ``workers`` how many arms train at once (None: one per arm,
    at most one per CPU core; 1 trains them one after another in this process). ``data_seed`` fixes the data.
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

    def __post_init__(self) -> None:
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
        return list(dict.fromkeys(self.latents)) or [self.preset.model.num_latents]

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


@dataclass(frozen=True)
class TestQuestion:
    """One test question as the study scores it."""

    id: str
    family: str
    question: str
    answer: str
    image: Image.Image = field(repr=False)


def normalise(text: str) -> str:
    """Lower case, surrounding punctuation (not brackets) and spaces stripped, inner spaces collapsed:
    ``" Red."`` -> ``"red"``, ``"Right (B)."`` -> ``"right (b)"``.
    """
    return " ".join(text.strip(_PUNCTUATION).lower().split())


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def run_study(options: StudyOptions) -> dict[str, Any]:
    """Run the whole study (see the module docstring); returns the results dict also written as results.json."""
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset, timings = options.preset, _Timings()
    runs, outcomes = [], {}
    with _quiet_libraries(), _torch_threads(options.shared_threads), _StageProgress(options) as progress:
        with timings("data"):
            progress.start("writing synthetic data", total=1)
            data = write_data(out / "data", preset, seed=options.data_seed)
            test = read_test(data)
            progress.finish()
        with timings("vision"):
            images, targets = read_vision_data(data, preset)
        tokenizer = synthetic.tokenizer()
        for latents in options.budgets:
            for seed in range(options.seeds):
                first = (latents, seed) == (options.budgets[0], 0)
                root = out if first else out / "runs" / f"latents{latents}_seed{seed}"
                label = f"seed {seed}, {latents} visual tokens"
                work = _fresh(root / "work")
                with timings("vision"):
                    progress.start(f"training the vision tower ({label})", total=preset.vision_steps)
                    init, vision_losses = initialise(
                        work / "init",
                        preset,
                        latents=latents,
                        tokenizer=tokenizer,
                        seed=seed,
                        images=images,
                        targets=targets,
                        on_step=lambda step, loss: progress.advance(),
                    )
                    progress.finish()
                with timings("pretrain"):
                    progress.start(f"pre-training ({label})", total=preset.pretrain_steps)
                    with _follow_each({"": [work / "pretrain" / "history.jsonl"]}, progress.advance):
                        pretrained = _run_stage(
                            "pretrain",
                            preset,
                            work=work,
                            name="pretrain",
                            init=init,
                            seed=seed,
                            data=data,
                            steps=preset.pretrain_steps,
                        )
                    _publish(pretrained.final_dir, root / "pretrained")
                    progress.finish()
                jobs = [
                    ArmJob(
                        arm=arm,
                        root=root,
                        preset=preset,
                        seed=seed,
                        init=init,
                        data=data,
                        threads=options.threads,
                    )
                    for arm in options.arms
                ]
                with timings("fine_tune_and_evaluate"):
                    for job, done in zip(
                        jobs, _run_arms(jobs, options.parallel_arms, progress, label), strict=True
                    ):
                        outcomes[latents, seed, job.arm] = _by_family(test, done.right)
                        runs.append(
                            _run_record(
                                latents,
                                seed,
                                done,
                                outcomes[latents, seed, job.arm],
                                pretrain_losses=pretrained.losses,
                                vision_losses=vision_losses,
                                out=out,
                            )
                        )
        chance = {family: synthetic.chance_level(family) for family in FAMILIES}
        chance[report.OVERALL] = sum(chance.values()) / len(chance)
        results = {
            "schema_version": 1,
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
                "image_size": preset.model.image_size,
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


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def write_data(directory: Path, preset: Preset, *, seed: int) -> Path:
    """Write the training split (questions and captions) and the test split; reuse them if already written.

    The test split has ``test_per_family`` questions per family (families take turns in the generator). The
    training questions are also written one file per family, ``train_<family>.jsonl``: fine-tuning reads those.
    """
    manifest = {
        "train": preset.train_samples,
        "test": preset.test_per_family * len(FAMILIES),
        "image_size": preset.model.image_size,
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
        _family_file(directory, family).write_text("".join(lines))
    manifest_file.write_text(json.dumps(manifest))
    return directory


def _family_file(directory: Path, family: str) -> Path:
    return directory / f"train_{family}.jsonl"


def read_split(directory: Path, split: str) -> Iterator[tuple[dict[str, Any], Image.Image]]:
    """The records of a written split with their images decoded (RGB), in file order."""
    for line in (directory / f"{split}.jsonl").read_text().splitlines():
        record = json.loads(line)
        with Image.open(directory / record["image"]) as image:
            yield record, image.convert("RGB")


def read_test(directory: Path) -> list[TestQuestion]:
    """The test questions of a data directory, images decoded, in file order."""
    questions = []
    for record, image in read_split(directory, "test"):
        human, answer = (turn["value"] for turn in record["conversations"])
        questions.append(
            TestQuestion(
                id=record["id"],
                family=record["family"],
                question=human.replace("<image>", "").strip(),
                answer=answer,
                image=image,
            )
        )
    return questions


def read_vision_data(directory: Path, preset: Preset) -> tuple[list[Image.Image], torch.Tensor]:
    """The training images and their per-patch targets (:func:`~aki.quickstart.vision.patch_targets`), read
    once per study: every (budget, seed) trains its own tower on them.
    """
    images, targets = [], []
    size = preset.model
    for record, image in read_split(directory, "train"):
        scene = synthetic.Scene.from_dict(record["scene"])
        targets.append(vision.patch_targets(scene, image_size=size.image_size, patch_size=size.patch_size))
        images.append(image)
    return images, torch.stack(targets)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def initialise(
    directory: Path,
    preset: Preset,
    *,
    latents: int,
    tokenizer: Any,
    seed: int,
    images: Sequence[Image.Image],
    targets: torch.Tensor,
    on_step: Callable[[int, float], Any] | None = None,
) -> tuple[Path, list[float]]:
    """Build the tiny AKI with a seeded random initialisation, train its vision tower alone on ``images`` and
    their ``targets`` (:func:`read_vision_data`, :func:`~aki.quickstart.vision.pretrain_vision_tower`) and save
    it with its processor; the directory and the tower's losses.
    """
    config = build_config(tokenizer, dataclasses.replace(preset.model, num_latents=latents))
    transformers.set_seed(seed)
    model = AkiForConditionalGeneration(config)
    processor = AkiProcessor.for_model(config, tokenizer, chat_template=chat_template(""))
    losses, _ = vision.pretrain_vision_tower(
        model.vision_tower.to(default_device()),
        processor.image_processor(list(images), return_tensors="pt")["pixel_values"],
        targets,
        steps=preset.vision_steps,
        batch_size=preset.batch_size,
        lr=preset.vision_lr,
        seed=seed,
        on_step=on_step,
    )
    model.cpu().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, losses


def train_config(
    stage: str,
    preset: Preset,
    *,
    output_dir: Path,
    init: Path,
    seed: int,
    steps: int,
    data: Path,
    attention: str = "causal",
    order: str = "image_first",
    families: Sequence[str] = (),
) -> TrainConfig:
    """A recipe config of the study: quiet, no intermediate checkpoints, the preset's batch and schedule.

    Pre-training reads the captions, fine-tuning the questions: one source per family, weighted by
    ``preset.family_weight``, of every family or of ``families`` only (the curriculum). The vision tower
    (trained by :func:`initialise`) stays frozen in both.
    """
    pretraining = stage == "pretrain"
    if pretraining:
        sources = [SourceConfig(format="jsonl", path=str(data / "train_captions.jsonl"), name="captions")]
    else:
        sources = [
            SourceConfig(
                format="llava",
                path=str(_family_file(data, family)),
                name=family,
                weight=preset.family_weight(family),
            )
            for family in families or FAMILIES
        ]
    return TrainConfig(
        stage=stage,
        output_dir=str(output_dir),
        seed=seed,
        steps=steps,
        batch_size=preset.batch_size if pretraining else preset.sft_batch_size,
        model=ModelConfig(
            init=str(init),
            tokenizer=None,  # the processor saved with the model
            attention=attention,
            train_vision_tower=False,
        ),
        data=DataConfig(sources=sources, max_length=MAX_LENGTH, order=order),
        optim=OptimConfig(
            lr=preset.pretrain_lr if pretraining else preset.sft_lr,
            warmup_steps=min(preset.warmup_steps, steps // 4),
            min_lr_ratio=0.1,
        ),
        checkpoint=CheckpointConfig(every=0, keep=1),
        logging=LoggingConfig(progress_bar=False, tensorboard=False),
    )


def _run_stage(stage: str, preset: Preset, *, work: Path, name: str, init: Path, **kwargs) -> TrainResult:
    """One recipe run into ``work/name``; its printed summary goes to ``work/train.log``."""
    config = train_config(stage, preset, output_dir=work / name, init=init, **kwargs)
    with _log_to(work / "train.log"):
        result = (run_pretrain if stage == "pretrain" else run_sft)(config)
    if result.final_dir is None:
        raise RuntimeError(
            f"the {name} run stopped at step {result.steps} of {config.steps}; see {work / name}"
        )
    shutil.rmtree(work / name / "checkpoints", ignore_errors=True)  # resumable state: not needed once done
    return result


@dataclass(frozen=True)
class ArmJob:
    """One arm of one (budget, seed): fine-tune from ``root/pretrained`` (DOT: from ``init``) and evaluate."""

    arm: str
    root: Path
    preset: Preset
    seed: int
    init: Path
    data: Path
    threads: int = 1

    @property
    def work(self) -> Path:
        return self.root / "work"

    def progress_files(self) -> list[Path]:
        """Files that grow by one line per training step or evaluation batch (what the progress bar follows)."""
        return [
            *(self.work / stage.name / "history.jsonl" for stage in training_plan(self.arm, self.preset)),
            self.work / f"eval_{self.arm}.progress",
        ]

    def units(self, test_size: int) -> int:
        steps = sum(stage.steps for stage in training_plan(self.arm, self.preset))
        return steps + -(-test_size // self.preset.eval_batch_size)


@dataclass(frozen=True)
class ArmResult:
    """What :func:`run_arm` returns: the model directory, losses, seconds and whether each test answer was right."""

    arm: str
    model_dir: Path
    losses: list[float]
    pretrain_losses: list[float] | None  # the DOT arm's own pre-training; None: the shared one
    train_seconds: float
    eval_seconds: float
    right: list[bool]


class Stage(NamedTuple):
    """One recipe run of an arm: its directory name, recipe, image order, steps and curriculum families."""

    name: str
    recipe: str  # "pretrain" or "sft"
    order: str
    steps: int
    families: tuple[str, ...] = ()


def training_plan(arm: str, preset: Preset) -> list[Stage]:
    """The recipe runs of one arm, each starting from the previous one's final model.

    ``causal`` and ``mma`` fine-tune the shared pre-trained model: the curriculum's families first
    (``preset.curriculum_steps``), then every family, ``preset.sft_steps`` in all. ``dot`` (the paper's
    dual-order training, causal) starts from the initialised model and pre-trains itself, half of the steps
    text first, then image first; then it fine-tunes in as many steps as the others, the same curriculum first
    and the rest half text first, half image first.
    """
    curriculum = (
        [
            Stage(
                f"sft_{arm}_curriculum",
                "sft",
                "image_first",
                preset.curriculum_steps,
                preset.curriculum_families,
            )
        ]
        if preset.curriculum_steps
        else []
    )
    rest = preset.sft_steps - preset.curriculum_steps
    if arm != "dot":
        return [*curriculum, Stage(f"sft_{arm}", "sft", "image_first", rest)]
    half_pt, half_sft = max(preset.pretrain_steps // 2, 1), max(rest // 2, 1)
    return [
        Stage("dot_pretrain_text_first", "pretrain", "text_first", half_pt),
        Stage("dot_pretrain_image_first", "pretrain", "image_first", max(preset.pretrain_steps - half_pt, 1)),
        *curriculum,
        Stage("sft_dot_text_first", "sft", "text_first", half_sft),
        Stage("sft_dot", "sft", "image_first", max(rest - half_sft, 1)),
    ]


def run_arm(job: ArmJob) -> ArmResult:
    """Fine-tune one arm, copy its final model to ``root/<arm>``, reload it and answer the test split."""
    with _quiet_libraries(), _torch_threads(job.threads):
        started = time.perf_counter()
        pretrain_losses, result = _train(job)
        train_seconds = time.perf_counter() - started
        model_dir = job.root / job.arm
        _publish(result.final_dir, model_dir)
        started = time.perf_counter()
        progress_file = job.work / f"eval_{job.arm}.progress"
        with progress_file.open("a") as tick:
            right = evaluate(
                model_dir,
                read_test(job.data),
                batch_size=job.preset.eval_batch_size,
                on_batch=lambda n: (tick.write(".\n"), tick.flush()),
            )
    return ArmResult(
        arm=job.arm,
        model_dir=model_dir,
        losses=list(result.losses),
        pretrain_losses=pretrain_losses,
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - started,
        right=right,
    )


def _train(job: ArmJob) -> tuple[list[float] | None, TrainResult]:
    """Run the arm's :func:`training_plan`; its own pre-training losses (None: it has none) and the last
    run's result with the losses of all its fine-tuning steps.
    """
    init = job.init if job.arm == "dot" else job.root / "pretrained"
    attention = "causal" if job.arm == "dot" else job.arm
    losses: dict[str, list[float]] = {"pretrain": [], "sft": []}
    for stage in training_plan(job.arm, job.preset):
        result = _run_stage(
            stage.recipe,
            job.preset,
            work=job.work,
            name=stage.name,
            init=init,
            seed=job.seed,
            data=job.data,
            steps=stage.steps,
            attention=attention,
            order=stage.order,
            families=stage.families,
        )
        losses[stage.recipe] += result.losses
        init = result.final_dir
    return losses["pretrain"] or None, dataclasses.replace(result, losses=losses["sft"])


def _run_arms(jobs: list[ArmJob], workers: int, progress: _StageProgress, label: str) -> list[ArmResult]:
    """Run the arms, ``workers`` at a time in separate processes (1: here, one after another)."""
    test_size = sum(1 for _ in (jobs[0].data / "test.jsonl").open())
    for job in jobs:
        progress.start(
            f"{_ARM_TITLES[job.arm]} + evaluation ({label})", total=job.units(test_size), key=job.arm
        )
    with _follow_each({job.arm: job.progress_files() for job in jobs}, progress.advance):
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

    The saved ``use_mma`` decides the attention. An answer is right when it equals the reference after
    :func:`normalise`, the same rule for every arm. The answers are written to ``test_predictions.jsonl``.
    """
    runner = Runner.from_pretrained(model_dir, batch_size=batch_size)
    prompts = [Prompt(question.question, [question.image]) for question in test]
    answers = runner.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS), on_batch=on_batch)
    records = [
        {"id": q.id, "family": q.family, "answer": q.answer, "prediction": a}
        for q, a in zip(test, answers, strict=True)
    ]
    (model_dir / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [normalise(q.answer) == normalise(a) for q, a in zip(test, answers, strict=True)]


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
        self.total_stages = 2 + runs * (
            2 + len(options.arms)
        )  # data, (vision, pre-training, arms) per run, report
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

    Training runs append one line per step to their history.jsonl and evaluation one per batch, also when
    they run in other processes.
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
    "ArmJob",
    "ArmResult",
    "StudyOptions",
    "TestQuestion",
    "evaluate",
    "initialise",
    "normalise",
    "read_split",
    "read_test",
    "read_vision_data",
    "run_arm",
    "run_study",
    "save_sample_mask",
    "train_config",
    "write_data",
]
