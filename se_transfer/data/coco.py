"""COCO detection data for torchvision's Faster R-CNN: registered data sets, a dataset, batching and a demo writer.

On-disk layout (the official COCO release, unpacked under a data root)::

    ROOT/annotations/instances_{split}.json
    ROOT/{split}/*.jpg                        # e.g. ROOT/train2017/, ROOT/val2017/

Registered names (:data:`COCO_DATASETS`): ``coco_2017_train`` and ``coco_2017_val``; the paper's minival protocol names
``coco_2014_minival`` (exactly val2017) and the pair ``coco_2014_train`` + ``coco_2014_valminusminival`` (together
exactly train2017, so they must be given together: see :func:`resolve_coco_datasets`); and ``coco_demo_{split}`` for
the generated demo set of :func:`write_demo_coco` (``ROOT/{split}/``, ``ROOT/annotations/instances_{split}.json``).

Targets follow torchvision's convention: contiguous labels 1..K (0 is the background) for the sorted COCO category
ids, boxes as float32 x1, y1, x2, y2 in pixels. Crowd regions (``iscrowd=1``) are not training targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .common import DatasetError, SeededIndex, augmentation_seed, loader_generator, seeded_indices

__all__ = [
    "COCO_2014_TRAIN_PAIR",
    "COCO_DATASETS",
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
    "InferenceBatchSampler",
    "build_detection_loader",
    "collate_detection",
    "infinite_batches",
    "read_rgb_image",
    "resolve_coco_dataset",
    "resolve_coco_datasets",
    "write_demo_coco",
]

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------------


def read_rgb_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (grayscale, CMYK, palette, RGBA and 16-bit converted).

    Raises :class:`DatasetError` naming the file when it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                gray = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            return np.array(rgb, dtype=np.uint8)
    except FileNotFoundError as err:
        raise DatasetError(f"image file {path} not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"image file {path} cannot be read: {err}") from err


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class CocoDetection(Dataset):
    """COCO instances as torchvision detection targets: ``(image 3 x H x W float in [0, 1], target dict)``.

    ``target``: ``boxes`` (float32 N x 4, x1 y1 x2 y2 in pixels of the returned image), ``labels`` (int64 N in 1..K),
    ``image_id`` (the COCO id) and ``orig_size`` ((h, w) of the image on disk). Category ids (sorted, possibly with
    gaps) map to contiguous labels 1..K (:attr:`coco_to_contiguous`, :attr:`contiguous_to_coco`, :attr:`class_names`
    with ``'__background__'`` at 0). Crowd annotations are not targets; boxes are clipped to the image and dropped when
    degenerate (width or height <= 1 pixel after clipping). With ``filter_empty`` images with no remaining box are left
    out; image files that do not exist are found at construction: an error naming them, or with ``skip_missing`` left
    out. All of these are counted in :attr:`stats` and reported in one warning. ``transforms(image HWC uint8, boxes,
    labels) -> (image, boxes, labels)`` (numpy) runs before the conversion to tensors.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        ann_file: str | os.PathLike[str],
        transforms: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
        | None = None,
        filter_empty: bool = True,
        skip_missing: bool = False,
    ) -> None:
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise DatasetError(f"annotation file {self.ann_file} not found; expected the COCO layout {_LAYOUT}")
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} not found; expected the COCO layout {_LAYOUT}")
        self.transforms = transforms
        self.filter_empty = filter_empty
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.ann_file))
        except (ValueError, KeyError, TypeError, AssertionError) as err:
            raise DatasetError(f"annotation file {self.ann_file} is not valid COCO json: {err!r}") from err

        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DatasetError(f"annotation file {self.ann_file} lists no categories")
        self.coco_to_contiguous: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.contiguous_to_coco: dict[int, int] = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names: list[str] = ["__background__"] + [self.coco.cats[c]["name"] for c in cat_ids]

        self.stats: dict[str, int] = {
            "degenerate_boxes": 0,
            "crowd_boxes": 0,
            "images_without_annotations": 0,
            "missing_images": 0,
        }
        image_ids = self._check_files(sorted(self.coco.imgs), skip_missing)

        ids: list[int] = []
        boxes: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for img_id in image_ids:
            b, lab = self._parse(img_id)
            if len(lab) == 0:
                self.stats["images_without_annotations"] += 1
                if filter_empty:
                    continue
            ids.append(img_id)
            boxes.append(b)
            labels.append(lab)
        self.ids: list[int] = ids
        # Flat arrays + offsets rather than one small array per image: cheap to share with DataLoader workers.
        counts = np.array([len(lab) for lab in labels], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._boxes = np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
        self._labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self._report()

    def _check_files(self, image_ids: list[int], skip_missing: bool) -> list[int]:
        """Every image file exists (checked at start, not when a worker first reads it); with ``skip_missing`` the
        missing ones are left out and reported, else they are an error naming them."""
        kept, missing = [], []
        for img_id in image_ids:
            path = self.image_dir / self.coco.imgs[img_id]["file_name"]
            (kept if os.path.exists(path) else missing).append(img_id)
        if missing:
            self.stats["missing_images"] = len(missing)
            shown = ", ".join(str(self.image_dir / self.coco.imgs[i]["file_name"]) for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            if not skip_missing:
                raise DatasetError(
                    f"{self.ann_file}: {len(missing)} of {len(image_ids)} image files are missing: {shown}{more} "
                    "(set DATALOADER.SKIP_MISSING_IMAGES True to leave them out)"
                )
            logger.warning(
                "%s: skipped %d of %d images whose files are missing: %s%s",
                self.ann_file,
                len(missing),
                len(image_ids),
                shown,
                more,
            )
        return kept

    def _parse(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[img_id]
        height, width = float(info["height"]), float(info["width"])
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                self.stats["crowd_boxes"] += 1
                continue
            cat = ann["category_id"]
            if cat not in self.coco_to_contiguous:
                raise DatasetError(f"{self.ann_file}: annotation {ann.get('id')} has unknown category_id {cat}")
            box = ann.get("bbox")
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} (image {img_id}) has bbox {box!r}; "
                    "expected [x, y, width, height] as 4 numbers"
                )
            x, y, w, h = (float(v) for v in box)
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 - x1 <= 1.0 or y2 - y1 <= 1.0:
                self.stats["degenerate_boxes"] += 1
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(self.coco_to_contiguous[cat])
        return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)

    def _report(self) -> None:
        s = self.stats
        # Crowd boxes and images without objects are normal in COCO (handled as detectron2 does): INFO. Boxes dropped
        # for being degenerate are a problem of the annotations: WARNING.
        empty = "left out" if self.filter_empty else "kept"
        logger.log(
            logging.WARNING if s["degenerate_boxes"] else logging.INFO,
            "%s: %d images kept; dropped %d degenerate boxes (width or height <= 1 px after clipping), ignored %d "
            "crowd boxes, %s %d images without usable annotations",
            self.ann_file,
            len(self.ids),
            s["degenerate_boxes"],
            s["crowd_boxes"],
            empty,
            s["images_without_annotations"],
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """Number of object categories K (labels 1..K; the model needs K + 1 outputs with the background)."""
        return len(self.contiguous_to_coco)

    def image_path(self, i: int) -> Path:
        """Path of the i-th image file."""
        return self.image_dir / self.coco.imgs[self.ids[i]]["file_name"]

    def get_height_width(self, i: int) -> tuple[int, int]:
        """(height, width) of the i-th image from the annotation file, without reading the image."""
        info = self.coco.imgs[self.ids[i]]
        return int(info["height"]), int(info["width"])

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the annotation file (for aspect-ratio grouping)."""
        return [w / h for h, w in (self.get_height_width(i) for i in range(len(self)))]

    def annotations(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The i-th image's boxes (float32 N x 4 xyxy, clipped) and contiguous labels (int64 N), untransformed."""
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return self._boxes[lo:hi].copy(), self._labels[lo:hi].copy()

    def __getitem__(self, i: int | SeededIndex) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image (3 x H x W float32 RGB in [0, 1]) and its target dict, after ``transforms`` (seeded by a
        :class:`SeededIndex`, as training samplers give)."""
        with augmentation_seed(i) as i:
            return self._get(i)

    def _get(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        path = self.image_path(i)
        image = read_rgb_image(path)
        h, w = self.get_height_width(i)
        if image.shape[:2] != (h, w):
            raise DatasetError(
                f"image file {path} is {image.shape[0]} x {image.shape[1]} but {self.ann_file} says {h} x {w}"
            )
        boxes, labels = self.annotations(i)
        if self.transforms is not None:
            image, boxes, labels = self.transforms(image, boxes, labels)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(self.ids[i]),
            "orig_size": (h, w),
        }
        return tensor.contiguous(), target


# ---------------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------------


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch of (image, target) pairs -> (list of images, list of targets), as torchvision's detection models take."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


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
    :func:`infinite_batches` (``start_epoch`` and ``start_batch`` to resume), which calls ``set_epoch`` every epoch.
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


def infinite_batches(loader: DataLoader, start_epoch: int = 0, start_batch: int = 0) -> Iterator[Any]:
    """Batches of ``loader`` forever, epoch after epoch from ``start_epoch``, calling ``set_epoch`` before each.

    ``start_batch`` skips the first batches of the first epoch at the sampler (no images read), so a run resumed at
    iteration ``it`` with ``len(loader)`` batches per epoch continues with ``start_epoch = it // len(loader)`` and
    ``start_batch = it % len(loader)`` in the same batch order (the augmentations then differ).
    """
    sampler = loader.batch_sampler if hasattr(loader.batch_sampler, "set_epoch") else loader.sampler
    if start_batch and not hasattr(sampler, "set_epoch"):
        raise ValueError("start_batch needs a sampler with set_epoch(epoch, start_batch)")
    epoch, skip = start_epoch, start_batch
    while True:
        if skip:
            sampler.set_epoch(epoch, start_batch=skip)
        elif hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        skip = 0
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise ValueError(f"the loader yields no batches in epoch {epoch}")
        epoch += 1


# ---------------------------------------------------------------------------------------------------------------------
# Demo data
# ---------------------------------------------------------------------------------------------------------------------

# Category id (non-contiguous, as in COCO) -> (name, RGB colour).
_DEMO_CATEGORIES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("rectangle", (230, 30, 30)),
    3: ("disc", (30, 200, 40)),
    7: ("triangle", (40, 60, 235)),
}


def _demo_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted textured background: a colour gradient, sine stripes and pixel noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(90, 170, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    img = base + tilt[0] * (ys / height)[..., None] + tilt[1] * (xs / width)[..., None]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 24)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period))
    img += rng.uniform(8, 22) * stripes[..., None]
    img += rng.normal(0, 10, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def _demo_polygon(kind: str, x: float, y: float, w: float, h: float, rng: np.random.Generator) -> list[float]:
    """Outline of one shape inside the box (x, y, w, h), as a flat COCO polygon."""
    if kind == "rectangle":
        pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    elif kind == "disc":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = list(zip(x + w / 2 * (1 + np.cos(t)), y + h / 2 * (1 + np.sin(t))))
    else:
        apex = x + w * rng.uniform(0.2, 0.8)
        pts = [(apex, y), (x + w, y + h), (x, y + h)] if rng.random() < 0.5 else [(x, y), (x + w, y), (apex, y + h)]
    return [round(float(c), 2) for p in pts for c in p]


def _polygon_area(poly: Sequence[float]) -> float:
    xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _rle_uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a binary mask (column-major runs, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _write_demo_split(
    root: Path, split: str, num_images: int, image_size: tuple[int, int], rng: np.random.Generator, first_id: int
) -> None:
    from PIL import Image, ImageDraw

    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_id * 10
    cat_ids = list(_DEMO_CATEGORIES)
    for k in range(num_images):
        img_id = first_id + k
        height, width = image_size
        if height != width and k % 4 == 3:  # some images in the other orientation, for aspect-ratio grouping
            height, width = width, height
        canvas = Image.fromarray(_demo_background(rng, height, width).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(canvas)
        empty = split == "train" and k == num_images - 1  # exactly one image with no object in train
        placed: list[tuple[float, float, float, float]] = []
        crowd = split == "val" and k == 0  # one crowd region: a cluster of small discs, ignored by training and eval
        if crowd:
            cx, cy, cw, ch = 4, height - 30, 44, 26
            placed.append((float(cx), float(cy), float(cw), float(ch)))
        for _ in range(0 if empty else int(rng.integers(1, 5))):
            for _try in range(30):
                w = float(rng.integers(20, min(80, width - 2) + 1))
                h = float(rng.integers(20, min(80, height - 2) + 1))
                x = float(rng.integers(0, width - int(w)))
                y = float(rng.integers(0, height - int(h)))
                if all(_iou((x, y, w, h), p) <= 0.0 for p in placed):
                    break
            else:
                continue
            placed.append((x, y, w, h))
            cat = cat_ids[int(rng.integers(0, len(cat_ids)))]
            kind, colour = _DEMO_CATEGORIES[cat]
            jitter = rng.integers(-15, 16, size=3)
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
            poly = _demo_polygon(kind, x, y, w, h, rng)
            if kind == "disc":
                draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
            else:
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=fill)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": round(_polygon_area(poly), 2),
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
            ann_id += 1
        if crowd:
            mask = np.zeros((height, width), dtype=bool)
            mask[cy : cy + ch, cx : cx + cw] = True
            for dy in range(0, ch - 5, 9):
                for dx in range(0, cw - 5, 9):
                    draw.ellipse([cx + dx, cy + dy, cx + dx + 7, cy + dy + 7], fill=_DEMO_CATEGORIES[3][1])
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": 3,
                    "bbox": [float(cx), float(cy), float(cw), float(ch)],
                    "area": float(cw * ch),
                    "iscrowd": 1,
                    "segmentation": _rle_uncompressed(mask),
                }
            )
            ann_id += 1
        file_name = f"{img_id:012d}.jpg"
        canvas.save(root / split / file_name, format="JPEG", quality=92)
        images.append({"id": img_id, "file_name": file_name, "height": height, "width": width})
    doc = {
        "info": {"description": "se_transfer demo shapes (generated)", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, (n, _) in _DEMO_CATEGORIES.items()],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(doc, f)


def write_demo_coco(
    root: str | os.PathLike[str],
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] = (160, 192),
    seed: int = 0,
) -> Path:
    """Write a small COCO-format data set of coloured shapes under ``root`` (names ``coco_demo_train/val``).

    Layout: ``ROOT/{train,val}/*.jpg`` and ``ROOT/annotations/instances_{train,val}.json`` (full COCO json with
    polygon segmentations). Three categories with COCO-like gapped ids (1 rectangle, 3 disc, 7 triangle) in solid,
    distinct colours; 1-4 objects of 20-80 px per image on textured backgrounds (gradient, stripes, noise); images are
    ``image_size`` (H, W), every fourth one transposed. Exactly one train image has no object, and one val annotation
    is a crowd region. Big, high-contrast shapes: a small Faster R-CNN learns them in a few hundred iterations.
    Returns ``root``.
    """
    if num_train < 2 or num_val < 1:
        raise ValueError(f"need num_train >= 2 and num_val >= 1, got {num_train} and {num_val}")
    height, width = image_size
    if min(height, width) < 90:
        raise ValueError(f"image_size must be at least 90 x 90 for 20-80 px shapes, got {image_size}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_demo_split(root, "train", num_train, (height, width), rng, first_id=1)
    _write_demo_split(root, "val", num_val, (height, width), rng, first_id=100_000)
    return root
