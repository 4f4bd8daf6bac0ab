"""The training stream: an endless, deterministic sequence of micro-batches, sharded across ranks and workers.

Samples are numbered by a global *position*. Step ``s`` of a run uses the positions
``[s * G, (s + 1) * G)`` with ``G = batch_size * accumulation * world_size``; micro-batch ``m`` of rank ``r``
takes the ``batch_size`` positions starting at ``s * G + (m * world_size + r) * batch_size``. So ranks never
share a sample, and one process with batch 8 sees exactly what two processes with batch 4, or one process
with 2 x 4 accumulated, see. Worker ``w`` of ``K`` DataLoader workers builds this rank's micro-batches
``w, w + K, ...``, which the DataLoader hands out in order.

A position picks its source by the mixture weights (a seeded draw, the same in every process) and, for a
map-style source, its record from a seeded permutation of the source per epoch. Webdataset shards cannot be
read by position: each (rank, worker) *slot* reads its own shards (``shard % slots == slot``, in a seeded
order per epoch) one sample after another, and reports its place (epoch, shard, sample) with every
micro-batch so that a checkpoint can resume it.

Nothing here raises for bad data: a bad sample (whatever failed while reading or encoding it) is dropped and
reported in the micro-batch with its id (``skip``), or the micro-batch carries an ``error`` naming it
(``error``), and the training loop decides (it checkpoints first).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..mma import IGNORE_INDEX
from .encoding import Encoded, collate
from .sources import BadSample, IndexedSource, RawSample, ShardSource

# How many micro-batches ahead to look for a stand-in when every sample of a micro-batch is bad.
_FILLER_LOOKAHEAD = 16


@dataclass(frozen=True)
class Layout:
    """How global positions are cut into micro-batches: per-rank batch size, accumulation, world size, rank."""

    batch_size: int
    accumulation: int = 1
    world_size: int = 1
    rank: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.world_size

    def positions(self, micro_batch: int) -> range:
        """Global positions of this rank's ``micro_batch``-th micro-batch (counted from the start of the run)."""
        step, micro = divmod(micro_batch, self.accumulation)
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)


class Mixture:
    """Which source each global position draws from, and how many times that source was drawn before it.

    Draws are made in seeded blocks, so any position is found without replaying the stream sample by sample.
    """

    BLOCK = 4096

    def __init__(self, weights: Sequence[float], *, seed: int) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"mixture weights must be non-negative with a positive sum, got {weights.tolist()}"
            )
        self.probabilities = weights / weights.sum()
        self.seed = seed
        self._counts_before = [
            np.zeros(len(weights), dtype=np.int64)
        ]  # per block: draws of each source before it
        self._block: tuple[int, np.ndarray] | None = None

    def _draws(self, block: int) -> np.ndarray:
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, 0x6D6978, block])
            self._block = (block, rng.choice(len(self.probabilities), size=self.BLOCK, p=self.probabilities))
        return self._block[1]

    def pick(self, position: int) -> tuple[int, int]:
        """``(source, occurrence)``: the source of ``position`` and how often it was drawn at earlier positions."""
        if len(self.probabilities) == 1:
            return 0, position
        block, offset = divmod(position, self.BLOCK)
        while len(self._counts_before) <= block:
            done = len(self._counts_before) - 1
            counts = np.bincount(self._draws(done), minlength=len(self.probabilities))
            self._counts_before.append(self._counts_before[done] + counts)
        draws = self._draws(block)
        source = int(draws[offset])
        return source, int(self._counts_before[block][source] + np.count_nonzero(draws[:offset] == source))


class _ShardCursor:
    """One slot's walk through the shards it owns: epoch, index in the epoch's shard order, sample in the shard."""

    def __init__(
        self, source: ShardSource, *, slot: int, slots: int, seed: int, state: Sequence[int] | None
    ) -> None:
        self.source = source
        self.owned = list(range(slot, len(source.shards), slots))
        if not self.owned:
            raise ValueError(
                f"webdataset source {source.name!r} has {len(source.shards)} shards for {slots} readers "
                "(ranks x DataLoader workers): give it at least one shard per reader"
            )
        self.seed = seed
        self.epoch, self.shard, self.offset = state if state is not None else (0, 0, 0)
        self._samples: Iterator[RawSample] | None = None

    @property
    def state(self) -> tuple[int, int, int]:
        return self.epoch, self.shard, self.offset

    def _open(self) -> Iterator[RawSample]:
        order = np.random.default_rng([self.seed, 0x776473, self.epoch]).permutation(len(self.owned))
        samples = self.source.samples(self.owned[order[self.shard]])
        return itertools.islice(samples, self.offset, None)  # resume inside the shard

    def next(self) -> RawSample:
        empty_shards = 0
        while True:
            if self._samples is None:
                self._samples = self._open()
            sample = next(self._samples, None)
            if sample is not None:
                self.offset += 1
                return sample
            empty_shards = empty_shards + 1 if self.offset == 0 else 0
            if empty_shards > len(self.owned):
                raise ValueError(
                    f"the shards of webdataset source {self.source.name!r} read by this slot are empty"
                )
            self._samples, self.offset, self.shard = None, 0, self.shard + 1
            if self.shard == len(self.owned):
                self.epoch, self.shard = self.epoch + 1, 0


class TrainStream(IterableDataset):
    """Endless micro-batches for one rank; give it to ``DataLoader(stream, batch_size=None, num_workers=K)``.

    Each item is a dict: ``batch`` (see :func:`aki.data.encoding.collate`), ``micro_batch`` (its index),
    ``sample_ids``, ``skipped`` (``(sample_id, reason)`` pairs dropped by the ``skip`` policy), ``error`` (a
    message under the ``error`` policy, else None), ``slot`` and ``shard_states`` (where this slot stands in
    each webdataset source). ``start`` is the first micro-batch index (resume: steps done x accumulation).
    """

    def __init__(
        self,
        *,
        sources: Sequence[IndexedSource | ShardSource],
        weights: Sequence[float],
        encoder: Any,
        layout: Layout,
        seed: int = 0,
        shuffle: bool = True,
        flip_probability: float = 0.0,
        on_bad_sample: Literal["skip", "error"] = "skip",
        start: int = 0,
        shard_states: dict[str, dict[str, Sequence[int]]] | None = None,
    ) -> None:
        super().__init__()
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'error', got {on_bad_sample!r}")
        for source in sources:
            if not isinstance(source, ShardSource) and len(source) == 0:
                raise ValueError(f"data source {source.name!r} is empty")
        self.sources = list(sources)
        self.weights = list(weights)
        self.encoder = encoder
        self.layout = layout
        self.seed = seed
        self.shuffle = shuffle
        self.flip_probability = flip_probability
        self.on_bad_sample = on_bad_sample
        self.start = start
        self.shard_states = shard_states or {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot = self.layout.rank * workers + worker
        reader = _Reader(self, slot=slot, slots=self.layout.world_size * workers)
        for micro_batch in itertools.count(self.start + worker, workers):
            yield reader.micro_batch(micro_batch)


class _Reader:
    """The per-worker state of a :class:`TrainStream`: the mixture, permutation caches and shard cursors."""

    def __init__(self, stream: TrainStream, *, slot: int, slots: int) -> None:
        self.stream = stream
        self.slot = f"{slot}/{slots}"
        self.mixture = Mixture(stream.weights, seed=stream.seed)
        self.permutations: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, its order)
        self.cursors = {
            index: _ShardCursor(
                source,
                slot=slot,
                slots=slots,
                seed=stream.seed,
                state=stream.shard_states.get(self.slot, {}).get(source.name),
            )
            for index, source in enumerate(stream.sources)
            if isinstance(source, ShardSource)
        }

    def raw(self, position: int) -> RawSample:
        source_index, occurrence = self.mixture.pick(position)
        if source_index in self.cursors:
            return self.cursors[source_index].next()
        source = self.stream.sources[source_index]
        epoch, offset = divmod(occurrence, len(source))
        if self.stream.shuffle:
            if self.permutations.get(source_index, (None,))[0] != epoch:
                rng = np.random.default_rng([self.stream.seed, source_index, epoch])
                self.permutations[source_index] = (epoch, rng.permutation(len(source)))
            offset = int(self.permutations[source_index][1][offset])
        try:
            return source[offset]
        except Exception as error:  # one unreadable record is a bad sample, not the end of the run
            return RawSample(
                f"{source.name}:{offset}", (), problem=f"could not be read: {type(error).__name__}: {error}"
            )

    def encode(self, position: int) -> Encoded:
        """The sample at ``position``; :class:`BadSample` naming it for anything that fails on it."""
        raw = self.raw(position)
        flip = self.stream.flip_probability > 0 and (
            np.random.default_rng([self.stream.seed, 0x666C6970, position]).random()
            < self.stream.flip_probability
        )
        try:
            return self.stream.encoder.encode(raw, flip=flip)
        except BadSample:
            raise
        except Exception as error:  # e.g. a value of an unexpected type deep in a record
            raise BadSample(raw.id, f"could not be encoded: {type(error).__name__}: {error}") from error

    def micro_batch(self, index: int) -> dict[str, Any]:
        encoded, skipped, error = [], [], None
        for position in self.stream.layout.positions(index):
            try:
                encoded.append(self.encode(position))
            except BadSample as bad:
                if self.stream.on_bad_sample == "error":
                    error = str(bad)
                    break
                skipped.append((bad.sample_id, bad.reason))
        if error is None and not encoded:
            filler = self.filler(index)
            if filler is None:
                error = (
                    f"micro-batch {index}: no readable sample in it or in the {_FILLER_LOOKAHEAD} after it"
                )
            else:
                encoded.append(filler)
        stream = self.stream
        batch = None
        if error is None:
            batch = collate(encoded, processor=stream.encoder.processor)
        return {
            "batch": batch,
            "micro_batch": index,
            "sample_ids": [sample.sample_id for sample in encoded if sample.sample_id],
            "skipped": skipped,
            "error": error,
            "slot": self.slot,
            "shard_states": {stream.sources[i].name: cursor.state for i, cursor in self.cursors.items()},
        }

    def filler(self, index: int) -> Encoded | None:
        """A stand-in for a micro-batch whose samples were all bad: a good sample of the next micro-batches
        with every label removed, so every rank still runs its forward and backward (DDP) but nothing is
        trained twice. Its id is empty: it is no sample of this step.
        """
        for ahead in range(1, _FILLER_LOOKAHEAD + 1):
            for position in self.stream.layout.positions(index + ahead):
                try:
                    sample = self.encode(position)
                except BadSample:
                    continue
                return Encoded(
                    "", sample.input_ids, [IGNORE_INDEX] * len(sample.labels), sample.roles, sample.images
                )
        return None


__all__ = ["Layout", "Mixture", "TrainStream"]
