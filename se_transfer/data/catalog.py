"""Registered COCO data sets: name -> (image folder, annotation file) under DATA.ROOT, and their checks."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .common import DatasetError

#: Registered data sets: name -> (image folder, annotation file), both relative to DATA.ROOT. The minival protocol's
#: ``coco_2014_train`` and ``coco_2014_valminusminival`` are listed with train2017, which is exactly their union; they
#: are only accepted together (:func:`resolve_coco_datasets`), never one alone.
COCO_DATASETS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("train2017", "annotations/instances_train2017.json"),
    "coco_2017_val": ("val2017", "annotations/instances_val2017.json"),
    "coco_2014_train": ("train2017", "annotations/instances_train2017.json"),
    "coco_2014_valminusminival": ("train2017", "annotations/instances_train2017.json"),
    "coco_2014_minival": ("val2017", "annotations/instances_val2017.json"),
}


#: The two minival-protocol training sets whose union is train2017; they must be given as this pair (either order).
COCO_2014_TRAIN_PAIR: tuple[str, str] = ("coco_2014_train", "coco_2014_valminusminival")


_DEMO_NAME = re.compile(r"^coco_demo_([A-Za-z0-9]+)$")


_LAYOUT = "ROOT/annotations/instances_{split}.json and ROOT/{split}/ (e.g. instances_val2017.json and val2017/)"


def _registered(name: str) -> tuple[str, str]:
    match = _DEMO_NAME.match(name)
    if match:
        split = match.group(1)
        return split, f"annotations/instances_{split}.json"
    if name not in COCO_DATASETS:
        known = ", ".join([*COCO_DATASETS, "coco_demo_{split}"])
        raise ValueError(f"unknown detection data set {name!r}; registered: {known}")
    return COCO_DATASETS[name]


def _checked_paths(root: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    image_folder, ann_rel = _registered(name)
    root = Path(root)
    image_dir, ann_file = root / image_folder, root / ann_rel
    if not ann_file.is_file():
        raise DatasetError(
            f"data set {name!r}: annotation file {ann_file} not found; expected the COCO layout {_LAYOUT} "
            f"under the data root {root}"
        )
    if not image_dir.is_dir():
        raise DatasetError(
            f"data set {name!r}: image folder {image_dir} not found; expected the COCO layout {_LAYOUT} "
            f"under the data root {root}"
        )
    return image_dir, ann_file


def resolve_coco_dataset(root: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of the registered data set ``name`` under ``root``, checked to exist.

    ``coco_2014_train`` and ``coco_2014_valminusminival`` are refused here: they only exist as a pair (which is
    train2017) and go through :func:`resolve_coco_datasets`.
    """
    if name in COCO_2014_TRAIN_PAIR:
        raise ValueError(
            f"{name!r} is one half of the minival protocol's training set: give DATASETS.TRAIN "
            f"{COCO_2014_TRAIN_PAIR!r} as the pair (resolved to train2017 by resolve_coco_datasets)"
        )
    return _checked_paths(root, name)


def resolve_coco_datasets(root: str | os.PathLike[str], names: Sequence[str]) -> list[tuple[Path, Path]]:
    """(image folder, annotation file) per registered name, the minival training pair merged into train2017.

    The paper's minival protocol trains on ``DATASETS.TRAIN ("coco_2014_train", "coco_2014_valminusminival")`` and
    tests on ``("coco_2014_minival",)``. With the 2017 files on disk, train2014 + val2014-minus-minival is exactly
    train2017 and minival is exactly val2017, so the pair (in either order) becomes the single train2017 entry and
    ``coco_2014_minival`` is val2017. Giving only one of the pair is an error (it has no 2017 counterpart), and so is
    giving the same files twice.
    """
    if isinstance(names, str):
        names = (names,)
    names = list(names)
    if not names:
        raise ValueError("no detection data set named")
    in_pair = [n for n in names if n in COCO_2014_TRAIN_PAIR]
    if in_pair:
        if sorted(in_pair) != sorted(COCO_2014_TRAIN_PAIR):
            raise ValueError(
                f"the minival protocol's training set is the pair {COCO_2014_TRAIN_PAIR!r} (together train2017); "
                f"got {in_pair!r} in {names!r}: give both, or use 'coco_2017_train'"
            )
        first = names.index(in_pair[0])
        names = [n for n in names if n not in COCO_2014_TRAIN_PAIR]
        names.insert(first, "coco_2017_train")
    out = [_checked_paths(root, n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"data sets {names!r} name the same files more than once")
    return out
