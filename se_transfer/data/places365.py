"""Places365 scene classification: a reader of the official file lists, a fake-tree writer, loaders and a benchmark.

On-disk layout (the official release, as ``torchvision.datasets.Places365`` expects it, unpacked under a data root)::

    ROOT/categories_places365.txt            # "/a/airfield 0": class name and id, ids 0..364 in order
    ROOT/places365_train_standard.txt        # "/a/airfield/00000001.jpg 0": path (relative to the folder) and label
    ROOT/places365_train_challenge.txt       # same format
    ROOT/places365_val.txt                   # "Places365_val_00000001.jpg 165"
    ROOT/data_256_standard/ or ROOT/data_large_standard/     # train-standard images (small=True: the 256 folder)
    ROOT/data_256_challenge/ or ROOT/data_large_challenge/   # train-challenge images
    ROOT/val_256/ or ROOT/val_large/                         # val images

The lists are read by this module rather than by torchvision (which checks the md5 of every archive and list).
Images are decoded with ``torchvision.io.decode_image(..., mode=RGB)`` (libjpeg-turbo; grayscale and CMYK JPEGs come
out as RGB), falling back to PIL for formats torchvision cannot decode.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .coco import read_rgb_image
from .common import FAKE_COLOURS, DatasetError, SeededIndex, augmentation_seed, loader_generator, sample_seed

__all__ = [
    "PLACES365_NUM_CLASSES",
    "PLACES365_SPLITS",
    "Places365",
    "ResumableDistributedSampler",
    "benchmark_input_pipeline",
    "build_classification_loader",
    "infinite_classification_batches",
    "read_places365_categories",
    "read_rgb_tensor",
    "write_fake_places365",
]

logger = logging.getLogger(__name__)

PLACES365_NUM_CLASSES = 365
"""Number of scene categories of Places365."""

PLACES365_SPLITS: tuple[str, ...] = ("train-standard", "train-challenge", "val")
"""The splits :class:`Places365` reads."""

_CATEGORIES_FILE = "categories_places365.txt"
_LIST_FILES: dict[str, str] = {
    "train-standard": "places365_train_standard.txt",
    "train-challenge": "places365_train_challenge.txt",
    "val": "places365_val.txt",
}
_IMAGE_FOLDERS: dict[tuple[str, bool], str] = {
    ("train-standard", True): "data_256_standard",
    ("train-standard", False): "data_large_standard",
    ("train-challenge", True): "data_256_challenge",
    ("train-challenge", False): "data_large_challenge",
    ("val", True): "val_256",
    ("val", False): "val_large",
}
_LAYOUT = (
    "expected the Places365 layout of torchvision.datasets.Places365 under the data root: "
    "ROOT/categories_places365.txt ('/a/airfield 0' per line, ids 0..364 in order), ROOT/places365_train_standard.txt, "
    "ROOT/places365_train_challenge.txt and ROOT/places365_val.txt ('relative/path.jpg LABEL' per line), and the image "
    "folders ROOT/data_256_standard/ (or data_large_standard/), ROOT/data_256_challenge/ (or data_large_challenge/), "
    "ROOT/val_256/ (or val_large/); small=True reads the 256 folders, small=False the large ones"
)


def _check_split(split: str) -> None:
    if split not in _LIST_FILES:
        raise ValueError(f"unknown Places365 split {split!r}; expected one of {list(PLACES365_SPLITS)}")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line of a UTF-8 text file; DatasetError if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if line:
                    yield lineno, line
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}; {_LAYOUT}") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text ({err}); {_LAYOUT}") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err}); {_LAYOUT}") from None


def _split_entry(line: str) -> tuple[str, int] | None:
    """('text', int) of a 'TEXT INT' line (two fields separated by white space), or None."""
    parts = line.split()
    if len(parts) != 2:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


def read_places365_categories(
    path: str | os.PathLike[str], num_classes: int | None = PLACES365_NUM_CLASSES
) -> list[str]:
    """Class names of a ``categories_places365.txt`` ('/a/airfield 0' per line, ids 0..N-1 in order).

    Checks that every line is 'name id', that the ids run 0, 1, ..., N-1 in file order, that the names are unique and,
    unless ``num_classes`` is None, that there are ``num_classes`` of them; raises :class:`DatasetError` naming the
    file (and the line) otherwise.
    """
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in _read_lines(path):
        entry = _split_entry(line)
        if entry is None:
            raise DatasetError(
                f"{path}, line {lineno}: malformed category {line!r}; expected 'NAME ID' like '/a/airfield 0'"
            )
        name, cid = entry
        if cid != len(names):
            raise DatasetError(
                f"{path}, line {lineno}: category id {cid} in {line!r}, expected {len(names)} "
                f"(ids must be 0..N-1, contiguous and in order)"
            )
        if name in seen:
            raise DatasetError(f"{path}, line {lineno}: category {name!r} repeats line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DatasetError(f"{path} lists no categories; {_LAYOUT}")
    if num_classes is not None and len(names) != num_classes:
        raise DatasetError(f"{path} lists {len(names)} categories, expected {num_classes}")
    return names


def _read_file_list(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Relative image paths (leading '/' stripped) and int64 labels of a split list ('path label' per line)."""
    paths: list[str] = []
    labels: list[int] = []
    for lineno, line in _read_lines(path):
        entry = _split_entry(line)
        if entry is None or not 0 <= entry[1] < num_classes:
            problem = "malformed entry" if entry is None else "label out of range"
            raise DatasetError(
                f"{path}, line {lineno}: {problem} {line!r}; expected 'relative/path.jpg LABEL' with LABEL in "
                f"[0, {num_classes})"
            )
        rel, label = entry[0].lstrip("/"), entry[1]
        if not rel:
            raise DatasetError(f"{path}, line {lineno}: empty image path in {line!r}")
        paths.append(rel)
        labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def read_rgb_tensor(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to a 3 x H x W uint8 RGB tensor (grayscale, CMYK, palette, alpha, 16-bit converted).

    Uses ``torchvision.io.decode_image(read_file(path), mode=ImageReadMode.RGB)`` and falls back to PIL's conversion
    (:func:`read_rgb_image`) for formats or depths torchvision does not decode to uint8 (BMP, TIFF, 16-bit PNG, ...).
    Raises :class:`DatasetError` naming the file when it is missing, empty or cannot be decoded.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    path = os.fspath(path)
    try:
        data = read_file(path)
    except RuntimeError as err:
        if not os.path.exists(path):
            raise DatasetError(f"image file {path} not found") from None
        raise DatasetError(f"image file {path} cannot be read: {err}") from None
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
            return image
        problem = f"torchvision decoded it to {image.dtype} {tuple(image.shape)}"
    except RuntimeError as err:
        problem = str(err).splitlines()[-1]
    try:
        array = read_rgb_image(path)
    except DatasetError as err:
        raise DatasetError(f"image file {path} cannot be decoded ({problem}; PIL: {err})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _files_exist(base: str, rel_paths: Sequence[str], chunk: int = 20_000) -> np.ndarray:
    """Whether ``base/rel`` exists, per path, as a boolean array.

    Long lists are checked by a few threads: stat calls release the GIL, which pays off on network file systems.
    """

    def check(lo: int) -> np.ndarray:
        part = rel_paths[lo : lo + chunk]
        return np.fromiter((os.path.exists(os.path.join(base, p)) for p in part), dtype=bool, count=len(part))

    starts = range(0, len(rel_paths), chunk)
    if len(starts) <= 1:
        return check(0) if rel_paths else np.zeros(0, dtype=bool)
    with ThreadPoolExecutor(max_workers=min(8, len(starts))) as pool:
        return np.concatenate(list(pool.map(check, starts)))


class Places365(Dataset):
    """One split of Places365 from the official lists: ``(transform(image), label)`` pairs.

    ``split``: "train-standard", "train-challenge" or "val"; ``small`` picks the 256 x 256 image folders
    (``data_256_*``, ``val_256``) rather than the large ones. The category list must hold ``num_classes`` names (365;
    None accepts any number, e.g. for a small fake tree) with ids 0..N-1 in order; a malformed list line (not
    'path int', or a label out of range) raises :class:`DatasetError` naming the file, the line number and the text.
    Every image path is checked to exist up front (``os.path.exists``): a missing file raises DatasetError naming the
    first one and the count, or with ``skip_missing`` the entries are dropped, counted in ``stats["missing_images"]``
    and reported in one warning. ``transform`` receives the 3 x H x W uint8 RGB tensor of :func:`read_rgb_tensor`
    (e.g. a :class:`~se_transfer.data.transforms.ClassificationTransform`); without one the uint8 tensor is returned.

    The paths are kept in one byte buffer with offsets and the labels in a numpy array, not in a list of Python
    objects, so DataLoader workers do not copy them page by page (reference counts) on 1.8M training images.
    :attr:`samples` and :attr:`targets` build Python lists on each access; use :meth:`image_path` and
    :attr:`labels` in loops.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        small: bool = True,
        transform: Callable[[torch.Tensor], Any] | None = None,
        skip_missing: bool = False,
        *,
        num_classes: int | None = PLACES365_NUM_CLASSES,
    ) -> None:
        _check_split(split)
        self.root = Path(root).expanduser()
        self.split = split
        self.small = bool(small)
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"data root {self.root} not found; {_LAYOUT}")
        self.classes: list[str] = read_places365_categories(self.root / _CATEGORIES_FILE, num_classes)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.list_file = self.root / _LIST_FILES[split]
        self.image_dir = self.root / _IMAGE_FOLDERS[(split, self.small)]
        if not self.list_file.is_file():
            raise DatasetError(f"missing list file {self.list_file} for split {split!r}; {_LAYOUT}")
        rel_paths, labels = _read_file_list(self.list_file, len(self.classes))
        if not rel_paths:
            raise DatasetError(f"list file {self.list_file} lists no images; {_LAYOUT}")
        if not self.image_dir.is_dir():
            other = self.root / _IMAGE_FOLDERS[(split, not self.small)]
            hint = f" ({other.name}/ exists: pass small={not self.small})" if other.is_dir() else ""
            raise DatasetError(f"missing image folder {self.image_dir} for split {split!r}{hint}; {_LAYOUT}")
        self.stats: dict[str, int] = {"listed_images": len(rel_paths), "missing_images": 0}
        rel_paths, labels = self._check_images(rel_paths, labels, skip_missing)
        self.stats["images"] = len(rel_paths)
        encoded = [p.encode("utf-8") for p in rel_paths]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels: np.ndarray = labels
        self._image_dir_str = os.fspath(self.image_dir)

    def _check_images(
        self, rel_paths: list[str], labels: np.ndarray, skip_missing: bool
    ) -> tuple[list[str], np.ndarray]:
        base = os.fspath(self.image_dir)
        exists = _files_exist(base, rel_paths)
        missing = np.flatnonzero(~exists)
        if missing.size == 0:
            return rel_paths, labels
        first = os.path.join(base, rel_paths[int(missing[0])])
        if not skip_missing:
            raise DatasetError(
                f"image file {first} listed in {self.list_file} not found; "
                f"{missing.size} of {len(rel_paths)} listed images are missing (skip_missing=True leaves them out)"
            )
        self.stats["missing_images"] = int(missing.size)
        shown = ", ".join(os.path.join(base, rel_paths[int(i)]) for i in missing[:5])
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        logger.warning(
            "%s: skipped %d of %d listed images whose files are missing: %s%s",
            self.list_file,
            missing.size,
            len(rel_paths),
            shown,
            more,
        )
        if missing.size == len(rel_paths):
            raise DatasetError(f"none of the {len(rel_paths)} images listed in {self.list_file} exist in {base}")
        keep = np.flatnonzero(exists)
        return [rel_paths[int(i)] for i in keep], labels[keep]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of categories."""
        return len(self.classes)

    def image_path(self, i: int) -> str:
        """Full path of the i-th image file."""
        rel = self._path_bytes[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8")
        return os.path.join(self._image_dir_str, rel)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(image path, label) of every image, as a new list."""
        return [(self.image_path(i), int(lab)) for i, lab in enumerate(self.labels.tolist())]

    @property
    def targets(self) -> list[int]:
        """Label of every image, as a new list."""
        return self.labels.tolist()

    def __getitem__(self, i: int | SeededIndex) -> tuple[Any, int]:
        """(transformed image, label) of the i-th image; without a transform the 3 x H x W uint8 RGB tensor. A
        :class:`SeededIndex` (what training samplers give) seeds the transform."""
        with augmentation_seed(i) as i:
            return self._get(i)

    def _get(self, i: int) -> tuple[Any, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        image = read_rgb_tensor(self.image_path(i))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, small={self.small}, "
            f"images={len(self)}, classes={self.num_classes})"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


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


def infinite_classification_batches(loader: DataLoader, start_iter: int = 0) -> Iterator[Any]:
    """Batches of ``loader`` forever, resuming at global iteration ``start_iter``; ``set_epoch`` before every epoch.

    Starts at epoch ``start_iter // len(loader)`` and skips its first ``start_iter % len(loader)`` batches. With a
    :class:`ResumableDistributedSampler` (what :func:`build_classification_loader` makes) the skip happens in the
    sampler, so no skipped image is read; with any other sampler the skipped batches are loaded and thrown away.
    The batch order after resuming is that of an uninterrupted run; the augmentations differ (new worker seeds).
    """
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("the loader yields no batches (fewer images than one batch per rank?)")
    epoch, skip = divmod(start_iter, per_epoch)
    sampler = loader.sampler
    while True:
        if isinstance(sampler, ResumableDistributedSampler):
            sampler.set_epoch(epoch, start_index=skip * (loader.batch_size or 1))
            batches: Iterator[Any] = iter(loader)
        else:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            batches = itertools.islice(iter(loader), skip, None)
        skip = 0
        count = 0
        for batch in batches:
            count += 1
            yield batch
        if count == 0:
            raise ValueError(f"the loader yields no batches in epoch {epoch}")
        epoch += 1


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Fake data
# ---------------------------------------------------------------------------------------------------------------------

# Eight of the shared colours (the purple and the brown of CIFAR's ten are left out).
_PALETTE = FAKE_COLOURS[[0, 1, 2, 3, 4, 5, 6, 8]]
_ANGLES = 12  # stripe directions, 15 degrees apart
_PERIODS = (3.0, 6.0, 12.0, 24.0)  # stripes per shorter side


def _fake_scene(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """H x W x 3 uint8 image of class ``label``: sine stripes whose colour, direction and frequency encode the class.

    The class picks one of 8 colours, 12 directions and 4 frequencies (384 combinations); the phase, contrast,
    background brightness and noise are random. Mirroring maps direction d to 180 - d, so a few classes are close
    after a horizontal flip: good enough for a model to learn, not perfectly separable.
    """
    colour = _PALETTE[label % len(_PALETTE)]
    angle = np.pi * ((label // len(_PALETTE)) % _ANGLES) / _ANGLES
    period = min(height, width) / _PERIODS[(label // (len(_PALETTE) * _ANGLES)) % len(_PERIODS)]
    k = np.float32(2 * np.pi / period)
    ys = np.arange(height, dtype=np.float32)[:, None] * (k * np.float32(np.sin(angle)))
    xs = np.arange(width, dtype=np.float32)[None, :] * (k * np.float32(np.cos(angle)))
    wave = np.sin(ys + xs + np.float32(rng.uniform(0, 2 * np.pi)))  # H x W in [-1, 1]
    fg = (colour * rng.uniform(0.8, 1.0)).astype(np.float32)
    bg = (colour * rng.uniform(0.1, 0.3) + rng.uniform(0, 40)).astype(np.float32)
    img = ((fg + bg) / 2) + ((fg - bg) / 2) * wave[..., None]
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(8.0)
    return np.clip(img + np.float32(0.5), 0, 255).astype(np.uint8)


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").save(path, format="JPEG", quality=90)


def write_fake_places365(
    root: str | os.PathLike[str],
    classes_file: str | os.PathLike[str] | None = None,
    num_classes: int = PLACES365_NUM_CLASSES,
    per_class_train: int = 2,
    per_class_val: int = 1,
    image_size: tuple[int, int] = (96, 128),
    small: bool = True,
    seed: int = 0,
    split_sets: Sequence[str] = ("train-standard", "val"),
) -> Path:
    """Write a small Places365 tree in the official layout (lists + real JPEGs) under ``root``; return ``root``.

    Class names come from ``classes_file`` (a ``categories_places365.txt``; its first ``num_classes`` names) or are
    generated (``/c/class_000``, ...). For each split of ``split_sets`` the list file and the images are written:
    training splits ``per_class_train`` images per class at ``/{name}/{k:08d}.jpg``, val ``per_class_val`` per class
    as ``Places365_val_{k:08d}.jpg`` in shuffled class order, into the 256 (``small``) or large folders. Images are
    ``image_size`` (H, W) JPEGs whose colour, stripe direction and frequency depend on the class
    (:func:`_fake_scene`). Deterministic in ``seed``.
    """
    if num_classes <= 0 or per_class_train < 0 or per_class_val < 0:
        raise ValueError("num_classes must be positive and the per-class counts >= 0")
    height, width = (int(s) for s in image_size)
    if height < 8 or width < 8:
        raise ValueError(f"image_size must be at least 8 x 8, got {image_size}")
    for split in split_sets:
        _check_split(split)
    if classes_file is not None:
        names = read_places365_categories(classes_file, num_classes=None)
        if num_classes > len(names):
            raise ValueError(f"{classes_file} has {len(names)} categories, fewer than num_classes={num_classes}")
        names = names[:num_classes]
    else:
        names = [f"/c/class_{i:03d}" for i in range(num_classes)]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / _CATEGORIES_FILE).write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)), encoding="utf-8")
    for s, split in enumerate(PLACES365_SPLITS):
        if split not in split_sets:
            continue
        folder = root / _IMAGE_FOLDERS[(split, small)]
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        if split == "val":
            labels = np.repeat(np.arange(num_classes), per_class_val)
            labels = np.random.default_rng([seed, s]).permutation(labels)
            entries = [(f"Places365_val_{k + 1:08d}.jpg", int(c)) for k, c in enumerate(labels.tolist())]
        else:
            entries = [
                (f"/{name.strip('/')}/{k + 1:08d}.jpg", c)
                for c, name in enumerate(names)
                for k in range(per_class_train)
            ]
        for k, (rel, label) in enumerate(entries):
            rng = np.random.default_rng([seed, s, k])
            _save_jpeg(_fake_scene(label, height, width, rng), folder / rel.lstrip("/"))
            lines.append(f"{rel} {label}\n")
        (root / _LIST_FILES[split]).write_text("".join(lines), encoding="utf-8")
    return root
