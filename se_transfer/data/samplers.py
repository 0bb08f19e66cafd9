"""Samplers: training batches (aspect-ratio grouped, resumable distributed) and evaluation batches over ranks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .common import SeededIndex, sample_seed, seeded_indices


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Training batches of one orientation (w >= h or w < h), reshuffled per epoch, sharded over ranks.

    ``dataset_aspect_ratios``: width / height per image. Each epoch the indices are shuffled with a generator seeded
    by (``seed``, epoch) (:meth:`set_epoch`; no shuffling when ``shuffle`` is False), split into the two groups, cut
    into batches of ``batch_size`` within each group, and the batches shuffled; rank r takes batches r, r + world_size,
    ... of that list, so ranks get disjoint indices and the same number of batches. With ``drop_last`` the incomplete
    batch of each group and the batches beyond a multiple of ``world_size`` are left out of the epoch; without it they
    are kept and the list is padded with batches from its start (repeating a few images) to a multiple of
    ``world_size``. ``len()`` is the number of batches per epoch on this rank, the same every epoch.
    """

    def __init__(
        self,
        dataset_aspect_ratios: Sequence[float],
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        ratios = np.asarray(dataset_aspect_ratios, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
            raise ValueError("aspect ratios (width / height) must be finite and positive")
        self.groups = (ratios < 1.0).astype(np.int64)  # 0: landscape or square, 1: portrait
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._start_batch = 0
        per_group = [int(np.sum(self.groups == g)) for g in (0, 1)]
        if drop_last:
            total = sum(n // batch_size for n in per_group)
            self._batches_per_rank = total // world_size
        else:
            total = sum(math.ceil(n / batch_size) for n in per_group)
            self._batches_per_rank = math.ceil(total / world_size)
        if self._batches_per_rank == 0:
            raise ValueError(
                f"{len(ratios)} images (per orientation {per_group}) make no batch of {batch_size} per rank on "
                f"{world_size} ranks"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use the order of ``epoch`` from now on; the next pass starts at batch ``start_batch`` (to resume)."""
        if not 0 <= start_batch <= self._batches_per_rank:
            raise ValueError(f"start_batch must be in [0, {self._batches_per_rank}], got {start_batch}")
        self.epoch = int(epoch)
        self._start_batch = int(start_batch)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch`` in order (rank r takes every world_size-th one from r)."""
        n = len(self.groups)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        batches: list[list[int]] = []
        for g in (0, 1):
            members = order[self.groups[order] == g]
            for lo in range(0, len(members), self.batch_size):
                chunk = members[lo : lo + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk.tolist())
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
            batches = [batches[j] for j in perm]
        total = self._batches_per_rank * self.world_size
        if len(batches) < total:  # drop_last=False: pad by repeating batches from the start
            batches = batches + [batches[j % len(batches)] for j in range(total - len(batches))]
        return batches[:total]

    def __iter__(self) -> Iterator[list[SeededIndex]]:
        start, self._start_batch = self._start_batch, 0
        batches = self.epoch_batches(self.epoch)
        for b in range(self.rank + start * self.world_size, len(batches), self.world_size):
            first = b * self.batch_size  # the batch's position in the epoch's global order: seeds its samples
            yield seeded_indices(batches[b], self.seed, self.epoch, list(range(first, first + len(batches[b]))))

    def __len__(self) -> int:
        return self._batches_per_rank


class InferenceBatchSampler(Sampler[list[int]]):
    """Evaluation batches: rank r takes images r, r + world_size, ... in order, cut into batches; nothing dropped.

    Over all ranks every image is covered exactly once; ranks may differ by one image (and so by one batch).
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        self.indices = list(range(rank, num_items, world_size))
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for lo in range(0, len(self.indices), self.batch_size):
            yield self.indices[lo : lo + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


def _aspect_ratios(dataset: Dataset) -> list[float]:
    if hasattr(dataset, "aspect_ratios"):
        return list(dataset.aspect_ratios())
    if hasattr(dataset, "get_height_width"):
        return [w / h for h, w in (dataset.get_height_width(i) for i in range(len(dataset)))]
    raise TypeError(f"aspect-ratio grouping needs a dataset with get_height_width(i); got {type(dataset).__name__}")


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose ``set_epoch(epoch, start_index)`` makes the next pass skip its first indices.

    Skipping happens on the index list (no image is read), so resuming in the middle of an epoch costs nothing; with
    ``start_index`` a multiple of the batch size the remaining batches are exactly those of an uninterrupted epoch.
    ``len()`` stays the full epoch length.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Use the order of ``epoch``; the next pass starts at this rank's index ``start_index``."""
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index must be in [0, {self.num_samples}], got {start_index}")
        super().set_epoch(epoch)
        self._start_index = int(start_index)

    def __iter__(self) -> Iterator[SeededIndex]:
        start, self._start_index = self._start_index, 0
        for k, index in enumerate(itertools.islice(super().__iter__(), start, None), start=start):
            # this rank's k-th sample is the epoch's (k * num_replicas + rank)-th: its position seeds its augmentation
            yield SeededIndex(int(index), sample_seed(self.seed, self.epoch, k * self.num_replicas + self.rank))
