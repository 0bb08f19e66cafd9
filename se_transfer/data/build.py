"""Loaders: DataLoaders of the data sets with their samplers, resumable infinite iterators, input-pipeline timing."""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .common import loader_generator
from .samplers import AspectRatioGroupedBatchSampler, InferenceBatchSampler, ResumableDistributedSampler, _aspect_ratios


def per_rank_batch(key: str, total: int, world_size: int) -> int:
    """The batch of one rank for a global batch ``total`` (the config key ``key``, e.g. SOLVER.IMS_PER_BATCH): every
    loader of the toolkit takes this per-rank size; the global size must divide evenly over the processes."""
    if total <= 0:
        raise ValueError(f"{key} must be positive, got {total}")
    if total % world_size:
        raise ValueError(f"{key} {total} must be divisible by {world_size} processes")
    return total // world_size


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch of (image, target) pairs -> (list of images, list of targets), as torchvision's detection models take."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def build_detection_loader(
    dataset: Dataset,
    batch_size_per_rank: int,
    train: bool,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    aspect_ratio_grouping: bool = True,
) -> DataLoader:
    """DataLoader of (list of images, list of targets) batches for this rank.

    Training: an :class:`AspectRatioGroupedBatchSampler` (one orientation per batch when ``aspect_ratio_grouping``,
    else one group), shuffled per epoch from ``seed``, sharded, equal batch counts on all ranks, incomplete batches
    dropped. The loader is one epoch long and knows nothing of iterations: training loops over
    :func:`resumable_batches` (which resumes at a start iteration and calls ``set_epoch`` every epoch).
    Augmentation randomness: torch seeds every worker's ``random`` and numpy from the loader generator, seeded by
    (``seed``, rank) (:func:`loader_generator`).
    Evaluation: :class:`InferenceBatchSampler`, sequential, strided by rank, nothing dropped, no augmentation order.
    Workers persist across epochs when ``num_workers > 0``; memory is pinned when CUDA is available.
    """
    if train:
        ratios = _aspect_ratios(dataset) if aspect_ratio_grouping else [1.0] * len(dataset)
        batch_sampler: Sampler[list[int]] = AspectRatioGroupedBatchSampler(
            ratios, batch_size_per_rank, shuffle=True, seed=seed, rank=rank, world_size=world_size, drop_last=True
        )
    else:
        batch_sampler = InferenceBatchSampler(len(dataset), batch_size_per_rank, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_detection,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=loader_generator(seed, rank),
    )


@contextlib.contextmanager
def workers_stopped_after(*loaders: DataLoader) -> Iterator[None]:
    """Stop the worker processes of ``loaders`` when the block ends (normally or not).

    Persistent workers otherwise live until their DataLoader is garbage-collected. A loader that closures and the
    trainer's hooks hold is freed by the cycle collector, which may finalise the worker queues first; the shutdown
    message then never leaves and every worker is waited for 5 s before it is terminated: 10 s with two workers, in
    a process that goes on after the run (the tests, a script calling a task's ``run``; at interpreter exit the
    workers are killed instead). Stopping them here, while everything is alive, takes milliseconds. PyTorch has no
    public call for it: the persistent iterator is ``DataLoader._iterator``."""
    try:
        yield
    finally:
        for loader in loaders:
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                loader._iterator = None
                iterator._shutdown_workers()


def resumable_batches(loader: Any, start_iter: int = 0) -> Iterator[Any]:
    """The one training iterator: batches of ``loader`` forever, epoch after epoch, from global iteration
    ``start_iter`` on, in the order of an uninterrupted run.

    It starts at epoch ``start_iter // len(loader)`` and skips that epoch's first ``start_iter % len(loader)``
    batches where the sampling happens, so no skipped image is read: ``loader.epoch_iter(epoch, start_batch)`` (the
    CIFAR loader), a batch sampler with ``set_epoch(epoch, start_batch=...)`` (the detection loader's), or a
    :class:`ResumableDistributedSampler` (``set_epoch(epoch, start_index=...)``, the classification loader's); any
    other loader's skipped batches are loaded and dropped. Per-sample augmentation seeds (``SeededIndex``) make the
    resumed batches equal to the uninterrupted ones.
    """
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("the loader yields no batches (fewer images than one batch per rank?)")
    epoch, skip = divmod(start_iter, per_epoch)
    while True:
        count = 0
        for batch in _epoch(loader, epoch, skip):
            count += 1
            yield batch
        if count == 0:
            raise ValueError(f"the loader yields no batches in epoch {epoch}")
        epoch, skip = epoch + 1, 0


def _epoch(loader: Any, epoch: int, skip: int) -> Iterator[Any]:
    """One epoch of ``loader`` without its first ``skip`` batches (see ``resumable_batches``)."""
    if hasattr(loader, "epoch_iter"):
        return loader.epoch_iter(epoch, start_batch=skip)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, AspectRatioGroupedBatchSampler):
        batch_sampler.set_epoch(epoch, start_batch=skip)
        return iter(loader)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, ResumableDistributedSampler):
        sampler.set_epoch(epoch, start_index=skip * (loader.batch_size or 1))
        return iter(loader)
    for s in (batch_sampler, sampler):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
            break
    return itertools.islice(iter(loader), skip, None)


def build_classification_loader(
    dataset: Dataset,
    batch_size_per_rank: int,
    train: bool,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
) -> DataLoader:
    """DataLoader of (images, labels) batches of this rank's shard, one epoch long.

    Sharding: a :class:`ResumableDistributedSampler` (``torch.utils.data.DistributedSampler`` with ``shuffle=train``,
    ``seed``, ``drop_last=train``, ``num_replicas=world_size``, ``rank``): in training each epoch (``set_epoch``) is
    a new permutation from (``seed``, epoch), identical on all ranks, of which rank r takes every world_size-th index
    from r (the tail beyond a multiple of world_size dropped). In evaluation the order is sequential and, as
    DistributedSampler does, the shards are padded to equal length by repeating the first indices, so with
    ``world_size > 1`` up to world_size - 1 images are seen twice. ``drop_last`` (incomplete last batch) defaults to
    ``train``. Augmentation randomness: torch seeds every worker's ``random`` and numpy from the loader generator,
    seeded by (``seed``, rank) (:func:`loader_generator`); with ``num_workers=0`` the transforms use the main
    process's ``random``. Memory is pinned when CUDA is available; workers persist across epochs.
    """
    if batch_size_per_rank <= 0:
        raise ValueError(f"batch_size_per_rank must be positive, got {batch_size_per_rank}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
    )
    return DataLoader(
        dataset,
        batch_size=batch_size_per_rank,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=num_workers > 0,
        generator=loader_generator(seed, rank),
    )


_PREFETCH = 2  # batches in flight per worker (the DataLoader default)


def benchmark_input_pipeline(dataset: Dataset, batch_size: int, num_workers: int, num_batches: int) -> dict[str, Any]:
    """Images/s of reading, decoding and transforming ``dataset`` through a DataLoader, after a warm-up.

    The loader shuffles (seed 0), keeps incomplete batches and wraps around epochs; memory is not pinned (only the CPU
    side is measured). Not timed: the first batch (worker start-up) and the batches the workers prefetched meanwhile
    (2 per worker), so the ``num_batches`` timed ones measure the steady rate. Returns ``images_per_sec``,
    ``images``, ``batches``, ``seconds``, ``ms_per_batch``, ``num_workers`` and ``batch_size``.
    """
    if batch_size <= 0 or num_batches <= 0 or num_workers < 0:
        raise ValueError(
            f"need batch_size > 0, num_batches > 0, num_workers >= 0; got {batch_size}, {num_batches}, {num_workers}"
        )
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    generator = torch.Generator()
    generator.manual_seed(0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=num_workers > 0,
        generator=generator,
        prefetch_factor=_PREFETCH if num_workers > 0 else None,
    )

    def forever(batches: DataLoader) -> Iterator[Any]:
        while True:
            yield from batches

    batches = forever(loader)
    for _ in range(1 + _PREFETCH * num_workers):  # worker start-up, then drain what the workers prefetched meanwhile
        next(batches)
    times: list[float] = []
    images = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        t0 = time.perf_counter()
        batch = next(batches)
        times.append(time.perf_counter() - t0)
        images += len(batch[1])
    seconds = time.perf_counter() - start
    batches.close()
    del batches, loader  # shuts the workers down
    return {
        "images_per_sec": images / seconds if seconds > 0 else math.inf,
        "images": images,
        "batches": num_batches,
        "seconds": seconds,
        "ms_per_batch": 1000.0 * statistics.median(times),
        "num_workers": num_workers,
        "batch_size": batch_size,
    }
