"""The training recipe of AKI: config -> data -> model -> accelerate loop -> checkpoint.

:func:`run_pretrain` and :func:`run_sft` run the same :class:`Recipe`; the stage decides how samples are
encoded (captions or conversations). One optimizer step is ``gradient_accumulation_steps`` micro-batches on
every rank; its loss is the mean over every labelled token of the whole step (all micro-batches, all ranks),
so 2 ranks x batch 4, 1 rank x 2 x 4 accumulated and 1 rank x batch 8 train the same. Gradients are clipped
once per step, just before the optimizer step.

Single process, DDP, FSDP and DeepSpeed come from ``accelerate launch`` and its config files; on a machine
without GPUs, ``accelerate launch --multi_gpu --num_processes 2 -m aki.train.cli sft ...`` runs two CPU
processes (gloo).

Example:
    >>> result = run_sft(load_config("sft", "my_sft.yaml"))  # doctest: +SKIP
    >>> result.losses[-1], result.final_dir  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.encoding import CaptionEncoder, ChatEncoder
from ..data.sources import IndexedSource, ShardSource, open_source
from ..data.stream import Layout, TrainStream
from ..mma import IGNORE_INDEX
from . import vocabulary
from .checkpoint import (
    TrainState,
    checkpoint_root,
    claim_output_dir,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    saved_config,
)
from .config import TrainConfig, load_config
from .lineage import check_vision_tower, stage_entry, write_record
from .model import build_model, library_progress_bars
from .optim import build_optimizer, build_scheduler

ENCODERS = {"pretrain": CaptionEncoder, "sft": ChatEncoder}
FORMATS = {"pretrain": {"jsonl", "folder", "webdataset", "synthetic"}, "sft": {"llava", "synthetic"}}


class DataError(RuntimeError):
    """The run stopped on bad data (``data.on_bad_sample: error``); a checkpoint of the last step was saved."""


class DivergedError(RuntimeError):
    """The run stopped on a loss or gradient norm that is not finite, before the optimizer step and before any
    save: the last checkpoint (if any) holds the last finite weights.
    """


# What a resumed run may set differently from the run it continues; anything else would mix two runs.
RESUMABLE_CHANGES = (
    "steps",
    "output_dir",
    "overwrite_output_dir",
    "checkpoint.",
    "logging.",
    "data.num_workers",
)
RESUMABLE_CHANGES += ("data.root", "data.on_bad_sample")


@dataclass
class TrainResult:
    """What a run did: one loss per optimizer step since the start of training (resumed runs included), the
    output folders, and what this run (this rank) saw: samples per step and bad samples skipped.
    """

    output_dir: Path
    final_dir: Path | None  # None when the run stopped before config.steps
    losses: list[float]
    steps: int
    tokens: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sample_ids: list[list[str]] = field(default_factory=list)


class Recipe:
    """``setup()`` builds everything (and resumes), ``train()`` runs the loop, ``cleanup()`` ends trackers."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.state = TrainState()
        self.skipped: list[tuple[str, str]] = []
        self.sample_ids: list[list[str]] = []
        self.shard_states: dict[str, dict[str, list[int]]] = {}
        self.added_words = 0

    # ----------------------------------------------------------------------------------------------
    # setup
    # ----------------------------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        check_vision_tower(config)
        self.accelerator = Accelerator(
            cpu=not torch.accelerator.is_available(),  # else a launch on CPUs gives N lone processes, not gloo
            mixed_precision=_mixed_precision(config.mixed_precision),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard" if config.logging.tensorboard else None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "tensorboard")
            ),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)
            ],
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"launched as {launched} processes but accelerate set up {self.accelerator.num_processes}: "
                "each would train alone; check the launcher's distributed settings"
            )
        resume_from = self._prepare_output_dir()
        # Denormal floats make CPU kernels many times slower (docs/design.md): flush them.
        self._flushing_denormals = self.accelerator.device.type == "cpu" and torch.set_flush_denormal(True)
        set_seed(config.seed)  # the same initial weights on every rank and in every run with this seed
        self.trainable, self.model, self.processor = build_model(config.model)
        sources = self._open_sources()
        self._fit_vocabulary(sources)
        optimizer = build_optimizer(self.trainable, config.optim)
        self.scheduler = build_scheduler(optimizer, config.optim, total_steps=config.steps)
        deepspeed = self.accelerator.state.deepspeed_plugin
        if deepspeed is not None:  # our loader is not prepared by accelerate, so DeepSpeed cannot infer this
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        self.trainable, self.optimizer = self.accelerator.prepare(self.trainable, optimizer)

        if resume_from is not None:
            self.state = load_checkpoint(self.accelerator, resume_from, scheduler=self.scheduler)
            self._check_resumable(resume_from)
            self.accelerator.print(f"resumed from {resume_from} at step {self.state.step}")
        self.state.world_size = self.accelerator.num_processes
        self.state.num_workers = config.data.num_workers
        self.shard_states = dict(self.state.shard_states)
        self.loader = iter(self._data_loader(sources))

        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(
                self.output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False)
            )
            _truncate_history(self.output_dir / "history.jsonl", self.state.step)
        if config.logging.tensorboard:
            self.accelerator.init_trackers("train", config=_hyperparameters(config))

    def _open_sources(self) -> list[IndexedSource | ShardSource]:
        config, data = self.config, self.config.data
        sources = [open_source(source, data.root) for source in data.sources]
        wrong = [s.format for s in data.sources if s.format not in FORMATS[config.stage]]
        if wrong:
            raise ValueError(
                f"{config.stage} reads sources of format {sorted(FORMATS[config.stage])}, got {wrong}"
            )
        if len({source.name for source in sources}) != len(sources):
            raise ValueError(
                f"data sources need distinct names, got {[s.name for s in sources]} (set 'name')"
            )
        self.accelerator.print(_data_plan(self.config, sources, self.accelerator.num_processes))
        return sources

    def _fit_vocabulary(self, sources: list[IndexedSource | ShardSource]) -> None:
        """Report the words of the data the tokenizer does not know; with ``model.extend_vocabulary``, add them
        (before the optimizer is built, so that the new rows are trained).
        """
        extend = self.config.model.extend_vocabulary
        found = vocabulary.scan(self.processor.tokenizer, sources, read_shards=extend)
        report = found.report(extending=extend)
        if report is not None:
            self.accelerator.print(report)
        if extend and found.words:
            self.processor = vocabulary.extend_vocabulary(self.model, self.processor, found.new_words())
            self.added_words = len(found.words)

    def _data_loader(self, sources: list[IndexedSource | ShardSource]) -> DataLoader:
        config, data = self.config, self.config.data
        encoder = ENCODERS[config.stage](
            self.processor,
            max_length=data.max_length,
            order=data.order,
            max_image_pixels=data.max_image_pixels,
        )
        stream = TrainStream(
            sources=sources,
            weights=[source.weight for source in data.sources],
            encoder=encoder,
            layout=Layout(
                batch_size=config.batch_size,
                accumulation=config.gradient_accumulation_steps,
                world_size=self.accelerator.num_processes,
                rank=self.accelerator.process_index,
            ),
            seed=config.seed,
            shuffle=data.shuffle,
            flip_probability=data.flip_probability,
            on_bad_sample=data.on_bad_sample,
            start=self.state.step * config.gradient_accumulation_steps,
            shard_states=self.shard_states,
        )
        if data.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked processes
        self.stream = stream
        return DataLoader(stream, batch_size=None, num_workers=data.num_workers)

    def _prepare_output_dir(self) -> Path | None:
        """The checkpoint to resume from, after checking ``output_dir`` (on the main process, for every rank):
        a run that does not resume needs it empty or new, or ``overwrite_output_dir`` (which deletes the earlier
        run's files); a resumed run needs a checkpoint there.
        """
        problem, resume_from = None, None
        if self.accelerator.is_main_process:
            try:
                resume_from = resolve_resume(self.config.checkpoint.resume, self.output_dir)
                if resume_from is None:
                    claim_output_dir(self.output_dir, overwrite=self.config.overwrite_output_dir)
            except (FileNotFoundError, FileExistsError) as error:
                problem = error
        problem, resume_from = broadcast_object_list([problem, resume_from])
        if problem is not None:
            raise problem
        return resume_from

    def _check_resumable(self, path: Path) -> None:
        saved = saved_config(path)
        if saved is not None:
            changed = _changed_settings(saved, self.config.to_dict())
            if changed:
                shown = "; ".join(f"{key}: {before!r} -> {now!r}" for key, (before, now) in changed.items())
                raise ValueError(
                    f"checkpoint {path} was trained with other settings than this run's ({shown}); resuming would "
                    "mix two runs: resume with the same settings (only steps, checkpoint.*, logging.*, "
                    "data.num_workers, data.root and data.on_bad_sample may change) or train into a new output_dir"
                )
        has_shards = any(source.format == "webdataset" for source in self.config.data.sources)
        saved = (self.state.world_size, self.state.num_workers)
        now = (self.accelerator.num_processes, self.config.data.num_workers)
        if saved[0] != now[0] or (has_shards and saved != now):
            raise ValueError(
                f"checkpoint {path} was written by {saved[0]} processes with {saved[1]} data workers; this run has "
                f"{now[0]} and {now[1]}: resume with the same layout (RNG states and shard positions are per slot)"
            )

    # ----------------------------------------------------------------------------------------------
    # train
    # ----------------------------------------------------------------------------------------------

    def train(self, *, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.steps``; with ``stop_at``, stop after that step instead, as if interrupted (a
        checkpoint is saved, no final model): a later run with ``checkpoint.resume=auto`` continues it.
        """
        config, accelerator = self.config, self.accelerator
        last_step = config.steps if stop_at is None else min(stop_at, config.steps)
        progress = tqdm(
            total=config.steps,
            initial=self.state.step,
            disable=not (config.logging.progress_bar and accelerator.is_main_process),
            desc=config.stage,
        )
        started, tokens_at_start = time.perf_counter(), self.state.tokens
        while self.state.step < last_step:
            step_started = time.perf_counter()
            micro_batches = self._next_step_batches()
            metrics = self.step(micro_batches)
            metrics["tokens_per_s"] = metrics["tokens"] / (time.perf_counter() - step_started)
            self._after_step(metrics, progress)
        progress.close()
        if not (checkpoint_root(self.output_dir) / f"step_{self.state.step:08d}").exists():
            self._checkpoint()
        final_dir = self._save_final() if self.state.step == config.steps else None
        seconds = time.perf_counter() - started
        result = TrainResult(
            output_dir=self.output_dir,
            final_dir=final_dir,
            losses=list(self.state.losses),
            steps=self.state.step,
            tokens=self.state.tokens,
            seconds=seconds,
            skipped=list(self.skipped),
            sample_ids=self.sample_ids,
        )
        self._summary(result, self.state.tokens - tokens_at_start)
        return result

    def _next_step_batches(self) -> list[dict[str, Any]]:
        """The micro-batches of the next step; stops the run (after a checkpoint) if any rank has bad data."""
        micro_batches, error = [], None
        for _ in range(self.config.gradient_accumulation_steps):
            try:
                item = next(self.loader)
            except Exception as exception:  # a crashed data worker must not lose the run's progress
                error = f"the data loader failed: {type(exception).__name__}: {exception}"
                break
            if item["error"] is not None:
                error = item["error"]
                break
            micro_batches.append(item)
        errors = [e for e in gather_object([error]) if e is not None]
        if errors:
            self._checkpoint()
            raise DataError(
                f"stopped at step {self.state.step} on bad data (checkpoint saved; fix or skip the data, then "
                f"resume): {'; '.join(errors)}"
            )
        return micro_batches

    def step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step on this rank's micro-batches (items of the stream): forward and backward of each,
        one clip, one optimizer and scheduler step; returns the step's global loss, lr, grad norm, tokens, skips.
        """
        accelerator = self.accelerator
        labelled = sum(int((item["batch"]["labels"][:, 1:] != IGNORE_INDEX).sum()) for item in micro_batches)
        step_tokens = accelerator.reduce(torch.tensor([labelled], device=accelerator.device), reduction="sum")
        # DDP averages gradients over ranks and accelerate divides by the accumulation steps: scale so that the
        # step's gradient is that of (sum of token losses) / (labelled tokens of the global step).
        scale = accelerator.num_processes * len(micro_batches) / max(int(step_tokens), 1)
        self.trainable.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        seen = torch.zeros((), device=accelerator.device)
        for item in micro_batches:
            with accelerator.accumulate(self.trainable):
                batch = {key: value.to(accelerator.device) for key, value in item["batch"].items()}
                token_losses = self._token_loss_sum(batch)
                accelerator.backward(token_losses * scale)
            loss_sum += token_losses.detach()
            seen += batch["attention_mask"].sum()
        max_norm = self.config.optim.max_grad_norm
        grad_norm = accelerator.clip_grad_norm_(self.trainable.parameters(), max_norm or math.inf)
        skipped = [pair for item in micro_batches for pair in item["skipped"]]
        local = torch.stack([loss_sum, seen, torch.tensor(float(len(skipped)), device=accelerator.device)])
        totals = accelerator.reduce(local, reduction="sum")
        loss = float(totals[0]) / max(int(step_tokens), 1)
        norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(norm)):
            raise DivergedError(
                f"step {self.state.step + 1}: the loss is {loss} and the gradient norm {norm}; stopped before the "
                "update and without saving (lower optim.lr, or set optim.max_grad_norm)"
            )
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of this update (the scheduler moves it next)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        self.skipped += skipped
        self.sample_ids.append([sample for item in micro_batches for sample in item["sample_ids"]])
        for item in micro_batches:
            self.shard_states[item["slot"]] = item["shard_states"]
        return {
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens": float(totals[1]),
            "skipped": float(totals[2]),
        }

    def _token_loss_sum(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the next-token cross-entropy over the labelled positions of a micro-batch."""
        outputs = self.trainable(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch.get("pixel_values"),
            mma_roles=batch["mma_roles"],
        )
        logits = outputs.logits[:, :-1].float()  # (B, L - 1, V): position t predicts token t + 1
        targets = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )

    def _after_step(self, metrics: dict[str, float], progress: tqdm) -> None:
        config, state = self.config, self.state
        state.step += 1
        state.losses.append(metrics["loss"])
        state.tokens += int(metrics["tokens"])
        state.skipped += int(metrics["skipped"])
        progress.update(1)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        if self.accelerator.is_main_process:
            with (self.output_dir / "history.jsonl").open("a") as history:
                history.write(json.dumps({"step": state.step, **metrics}) + "\n")
        if config.logging.record_samples:
            samples_dir = self.output_dir / "samples"
            samples_dir.mkdir(parents=True, exist_ok=True)
            with (samples_dir / f"rank{self.accelerator.process_index}.jsonl").open("a") as samples:
                samples.write(json.dumps({"step": state.step, "ids": self.sample_ids[-1]}) + "\n")
        if config.logging.tensorboard and state.step % config.logging.every == 0:
            self.accelerator.log({f"train/{key}": value for key, value in metrics.items()}, step=state.step)
        if config.checkpoint.every and state.step % config.checkpoint.every == 0:
            self._checkpoint()

    # ----------------------------------------------------------------------------------------------
    # checkpoints and the end of the run
    # ----------------------------------------------------------------------------------------------

    def _checkpoint(self) -> Path:
        merged: dict[str, dict[str, list[int]]] = {}
        for states in gather_object([self.shard_states]):
            merged.update(
                {slot: {name: list(s) for name, s in by_source.items()} for slot, by_source in states.items()}
            )
        self.state.shard_states = merged
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.state,
            scheduler=self.scheduler,
            config=self.config.to_dict(),
            keep=self.config.checkpoint.keep,
        )

    def _save_final(self) -> Path:
        """``output_dir/final``: the model (LoRA merged) with ``save_pretrained`` and its processor."""
        accelerator, final_dir = self.accelerator, self.output_dir / "final"
        accelerator.wait_for_everyone()
        if self.config.model.lora is not None:
            model, state_dict = accelerator.unwrap_model(self.trainable).merge_and_unload(), None
        else:
            model, state_dict = self.model, accelerator.get_state_dict(self.trainable)
        if accelerator.is_main_process:
            model.save_pretrained(final_dir, state_dict=state_dict, safe_serialization=True)
            self.processor.save_pretrained(final_dir)
            entry = stage_entry(
                self.config,
                trains_vision_tower=self.config.model.train_vision_tower,
                added_words=self.added_words,
            )
            write_record(final_dir, self.config, entry)
        accelerator.wait_for_everyone()
        return final_dir

    def _summary(self, result: TrainResult, tokens_this_run: int) -> None:
        summary = {
            "stage": self.config.stage,
            "steps": result.steps,
            "first_loss": result.losses[0] if result.losses else None,
            "final_loss": result.losses[-1] if result.losses else None,
            "tokens": result.tokens,
            "seconds": round(result.seconds, 2),
            "tokens_per_s": round(tokens_this_run / max(result.seconds, 1e-9), 1),
            "skipped_samples": self.state.skipped,
            "final_dir": str(result.final_dir) if result.final_dir else None,
        }
        if self.accelerator.is_main_process:
            _write_atomically(self.output_dir / "summary.json", json.dumps(summary, indent=1))
            lines = [f"  {key:<16} {value}" for key, value in summary.items()]
            self.accelerator.print("\n".join([f"training summary ({self.output_dir}):", *lines]))

    def cleanup(self) -> None:
        if getattr(self, "_flushing_denormals", False):
            torch.set_flush_denormal(False)  # torch's default
        if self.config.logging.tensorboard and hasattr(self, "accelerator"):
            self.accelerator.end_training()


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def run(config: TrainConfig, *, stop_at: int | None = None) -> TrainResult:
    """Run a recipe from its config: setup, train (until ``stop_at``, see :meth:`Recipe.train`), cleanup.

    The vision stage has its own short loop (:func:`aki.train.vision.run_vision`).
    """
    if config.stage == "vision":
        from .vision import run_vision

        with library_progress_bars(config.logging.progress_bar):
            return run_vision(config)
    recipe = Recipe(config)
    try:
        with library_progress_bars(config.logging.progress_bar):  # transformers' loading and saving bars
            recipe.setup()
            return recipe.train(stop_at=stop_at)
    finally:
        recipe.cleanup()


def run_pretrain(config: TrainConfig | str | Path | None = None) -> TrainResult:
    """Pre-train (captions, causal): ``config`` is a :class:`TrainConfig`, a YAML path, or None for the default."""
    return run(_as_config("pretrain", config))


def run_sft(config: TrainConfig | str | Path | None = None) -> TrainResult:
    """Fine-tune on conversations (MMA by default): a :class:`TrainConfig`, a YAML path, or None for the default."""
    return run(_as_config("sft", config))


def _as_config(stage: str, config: TrainConfig | str | Path | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        if config.stage != stage:
            raise ValueError(f"run_{stage} got a config for stage {config.stage!r}")
        return config
    return load_config(stage, config)


def _mixed_precision(setting: str) -> str | None:
    """``auto``: what ``accelerate launch`` set, else bf16 on a GPU that supports it, else fp32 (``no``)."""
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # accelerate reads it from the environment
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """The scalar settings of a config, flattened (``optim.lr``), for tensorboard's hparams."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}{key}.", inner)
        elif isinstance(value, (int, float, str, bool)):
            flat[prefix.rstrip(".")] = value

    visit("", config.to_dict())
    return flat


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved, now)}`` of the settings that differ, except :data:`RESUMABLE_CHANGES`."""
    flat_saved, flat_now = _flatten(saved), _flatten(now)
    return {
        key: (flat_saved.get(key), flat_now.get(key))
        for key in sorted(set(flat_saved) | set(flat_now))
        if flat_saved.get(key) != flat_now.get(key)
        and not any(key == allowed or key.startswith(allowed) for allowed in RESUMABLE_CHANGES if allowed)
    }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    return {
        key: value
        for name, inner in data.items()
        for key, value in _flatten(inner, f"{prefix}{name}.").items()
    }


def _data_plan(config: TrainConfig, sources: list[IndexedSource | ShardSource], world_size: int) -> str:
    """One line on what the run reads: the samples of each source and how many epochs of them the steps make."""
    sizes = {source.name: len(source) for source in sources if not isinstance(source, ShardSource)}
    per_step = config.batch_size * config.gradient_accumulation_steps * world_size
    seen = config.steps * per_step
    counts = ", ".join(f"{name} {size:,}" for name, size in sizes.items()) or "webdataset shards"
    line = f"data: {counts} samples; {config.steps:,} steps x {per_step} = {seen:,} samples"
    if sizes and len(sizes) == len(sources):
        line += f", {seen / sum(sizes.values()):.2g} epochs"
    return line


def _truncate_history(path: Path, steps: int) -> None:
    """Keep the history of the first ``steps`` steps (a resumed run rewrites what came after); a line a killed
    run left half-written is dropped. The file is replaced atomically.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= steps:
            kept.append(line if line.endswith("\n") else line + "\n")
    _write_atomically(path, "".join(kept))


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: never a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


__all__ = ["DataError", "DivergedError", "Recipe", "TrainResult", "run", "run_pretrain", "run_sft"]
