"""COCO detection data for torchvision's Faster R-CNN: the dataset (annotations checked, targets, augmentation).

On-disk layout (the official COCO release, unpacked under a data root)::

    ROOT/annotations/instances_{split}.json
    ROOT/{split}/*.jpg                        # e.g. ROOT/train2017/, ROOT/val2017/

Registered names (``catalog.COCO_DATASETS``): ``coco_2017_train`` and ``coco_2017_val``; the paper's minival
protocol names ``coco_2014_minival`` (exactly val2017) and the pair ``coco_2014_train`` +
``coco_2014_valminusminival`` (together exactly train2017, so they must be given together: see
``catalog.resolve_coco_datasets``); and ``coco_demo_{split}`` for the generated demo set of ``demo.write_demo_coco``
(``ROOT/{split}/``, ``ROOT/annotations/instances_{split}.json``).

Targets follow torchvision's convention: contiguous labels 1..K (0 is the background) for the sorted COCO category
ids, boxes as float32 x1, y1, x2, y2 in pixels. Crowd regions (``iscrowd=1``) are not training targets.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import _LAYOUT
from .common import DatasetError, SeededIndex, augmentation_seed
from .decode import read_rgb_image

__all__ = [
    "CocoDetection",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Demo data
# ---------------------------------------------------------------------------------------------------------------------
