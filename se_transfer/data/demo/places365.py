"""A generated tree in the official Places365 layout (lists + JPEGs): ``write_fake_places365``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..common import FAKE_COLOURS
from ..places365 import (
    _CATEGORIES_FILE,
    _IMAGE_FOLDERS,
    _LIST_FILES,
    PLACES365_NUM_CLASSES,
    PLACES365_SPLITS,
    _check_split,
    read_places365_categories,
)

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
