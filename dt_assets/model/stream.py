"""Streaming training data: batches drawn from preprocessed zarr stores in bounded memory.

A :class:`TrainingData` is a list of preprocessed stores (one per run), optionally restricted to one
particle (the events of other particles are in no split). Each epoch the on-disk chunks
(256 events) are shuffled with a seed derived from (seed, epoch) and dealt to the ranks; a rank
loads ``buffer_chunks`` chunks at a time, keeps the events of the wanted split, shuffles them and
yields batches. Memory is bounded by the buffer, whatever the size of the data. Every rank yields
the same number of batches per epoch (DDP needs that), cycling through its chunks if it must.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..physics.particles import pdg_code
from ..showers.schema import EVENTS_PER_CHUNK
from ..showers.store import open_store
from .preprocess import CELLS, SPLITS, Transform, preprocessed_transform
from .step import Batch

FIELDS = ("energy", "theta", "total", "measured_theta", "primary_energy")
#: the split code of events of another particle than the one asked for (in no split)
OTHER_PARTICLE = -1


@dataclass
class TrainingData:
    """Preprocessed stores (URLs) read as one data set; with ``particle``, only that particle's events."""

    urls: list[str]
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    buffer_chunks: int = 4
    particle: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("training data needs at least one preprocessed store")
        self._stores = [open_store(url, self.storage_options) for url in self.urls]
        self._splits = [np.asarray(ds["split"].values) for ds in self._stores]
        if self.particle is not None:
            code = pdg_code(self.particle)
            self._splits = [
                np.where(np.asarray(ds["particle"].values) == code, split, OTHER_PARTICLE)
                for ds, split in zip(self._stores, self._splits, strict=True)
            ]
        transforms = {ds.attrs["transform"] for ds in self._stores}
        grids = {tuple(ds.sizes[d] for d in ("x", "y", "z")) for ds in self._stores}
        if len(transforms) > 1 or len(grids) > 1:
            raise ValueError(f"stores disagree on their transform or grid: {sorted(transforms)} {sorted(grids)}")

    @property
    def transform(self) -> Transform:
        return preprocessed_transform(self._stores[0])

    def n_events(self, split: str = "train") -> int:
        return int(sum((s == SPLITS[split]).sum() for s in self._splits))

    def chunks(self) -> list[tuple[int, int, int]]:
        """(store, first event, stop) of every on-disk chunk."""
        return [
            (i, start, min(start + EVENTS_PER_CHUNK, len(s)))
            for i, s in enumerate(self._splits)
            for start in range(0, len(s), EVENTS_PER_CHUNK)
        ]

    def steps_per_epoch(self, batch_size: int, world_size: int = 1, split: str = "train") -> int:
        return self.n_events(split) // (batch_size * world_size)

    def load(self, chunk: tuple[int, int, int], split: str) -> dict[str, np.ndarray]:
        """The events of one chunk that belong to ``split``."""
        store, start, stop = chunk
        keep = np.flatnonzero(self._splits[store][start:stop] == SPLITS[split])
        if len(keep) == 0:
            return {}
        part = self._stores[store].isel(event=slice(start, stop))
        out = {name: np.asarray(part[name].values, dtype=np.float32)[keep] for name in FIELDS}
        out[CELLS] = np.asarray(part[CELLS].values)[keep]
        return out

    def batches(
        self,
        batch_size: int,
        epoch: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        shuffle: bool = True,
        max_batches: int | None = None,
    ) -> Iterator[Batch]:
        """This rank's batches of one epoch (full batches only)."""
        steps = self.steps_per_epoch(batch_size, world_size, split)
        if max_batches is not None:
            steps = min(steps, max_batches)
        if steps == 0:
            return
        rng = np.random.default_rng([seed, epoch])
        chunks = self.chunks()
        if shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        mine = chunks[rank::world_size]
        if not any((self._splits[i][a:b] == SPLITS[split]).any() for i, a, b in mine):
            mine = chunks  # too few chunks for every rank to have events of this split
        pending: dict[str, np.ndarray] = {}
        produced = 0
        for group in self._groups(mine, rng if shuffle else None):
            loaded = [part for part in (self.load(c, split) for c in group) if part]
            if not loaded:
                continue
            pending = _concat([pending, *loaded] if pending else loaded)
            n = len(pending["energy"])
            order = rng.permutation(n) if shuffle else np.arange(n)
            full = n // batch_size
            for b in range(full):
                idx = order[b * batch_size : (b + 1) * batch_size]
                yield _batch({k: v[idx] for k, v in pending.items()})
                produced += 1
                if produced == steps:
                    return
            rest = order[full * batch_size :]
            pending = {k: v[rest] for k, v in pending.items()}

    def _groups(self, chunks: list, rng: np.random.Generator | None) -> Iterator[list]:
        """Groups of ``buffer_chunks`` chunks: one pass over ``chunks``, then more passes (reshuffled) if needed."""
        while True:
            for start in range(0, len(chunks), self.buffer_chunks):
                yield chunks[start : start + self.buffer_chunks]
            if rng is not None:
                chunks = [chunks[i] for i in rng.permutation(len(chunks))]


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _batch(arrays: dict[str, np.ndarray]) -> Batch:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return Batch(cells=tensors.pop(CELLS).unsqueeze(1), **tensors)
