"""Pieces the data sets share: DatasetError, per-sample augmentation seeds, the loader seed, the fake-data colours."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


class DatasetError(ValueError):
    """A data set on disk is missing, unreadable or not in the expected layout (every data set raises it)."""


# Ten well-separated foreground colours (R, G, B) for generated images.
FAKE_COLOURS = np.array(
    [
        [230, 40, 40],
        [40, 200, 40],
        [50, 80, 240],
        [240, 220, 40],
        [220, 50, 220],
        [40, 220, 220],
        [250, 140, 20],
        [130, 60, 200],
        [240, 240, 240],
        [140, 100, 60],
    ],
    dtype=np.float32,
)


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """A DataLoader generator seeded from (``seed``, ``rank``): a different stream per rank, the same on every run.

    The DataLoader draws each worker's base seed from it; torch then seeds the worker's torch, ``random`` and numpy
    generators from that, so augmentation in workers is reproducible without a ``worker_init_fn``.
    """
    generator = torch.Generator()
    generator.manual_seed(int(np.random.default_rng([seed, rank]).integers(0, 2**62)))
    return generator


class SeededIndex(int):
    """A sample index as training samplers yield it: an int (usable wherever an index is) that also carries the seed
    of that sample's augmentation (``.seed``)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self) -> tuple:  # to DataLoader workers and back
        return (SeededIndex, (int(self), self.seed))

    def __repr__(self) -> str:
        return f"SeededIndex({int(self)}, seed={self.seed})"


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of ``epoch``'s global order (all ranks together): the same
    whichever process, worker or resumed run draws it, so a run resumed mid-epoch augments as an uninterrupted one."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1, np.uint64)[0])


def seeded_indices(indices: list[int], seed: int, epoch: int, positions: list[int]) -> list[SeededIndex]:
    """``indices`` paired with the seeds of their ``positions`` in the epoch."""
    return [SeededIndex(int(i), sample_seed(seed, epoch, p)) for i, p in zip(indices, positions)]


@contextlib.contextmanager
def augmentation_seed(index: int | SeededIndex) -> Iterator[int]:
    """Yield the plain index; for a SeededIndex, Python's ``random`` (which every transform draws from) is seeded with
    its seed for the duration and restored after, so the caller's own stream is not disturbed."""
    if not isinstance(index, SeededIndex):
        yield int(index)
        return
    state = random.getstate()
    random.seed(index.seed)
    try:
        yield int(index)
    finally:
        random.setstate(state)
