"""A generated COCO-format detection set (shapes on textured backgrounds): ``write_demo_coco``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
