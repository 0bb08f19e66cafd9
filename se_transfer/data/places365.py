"""Places365 scene classification: the category list, the file lists and the dataset, read and checked.

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

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import DatasetError, SeededIndex, augmentation_seed
from .decode import read_rgb_tensor

__all__ = [
    "PLACES365_NUM_CLASSES",
    "PLACES365_SPLITS",
    "Places365",
    "read_places365_categories",
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


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# Fake data
# ---------------------------------------------------------------------------------------------------------------------
