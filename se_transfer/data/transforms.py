"""Batched tensor augmentations: the single place where augmentations live.

Everything here works on a whole batch at once (N x C x H x W) on any device with plain torch ops, and draws its
randomness from an explicit ``torch.Generator`` so that the same generator state gives the same augmentation (this is
what makes a resumed run bit-exact). Each random transform is split into ``sample_*`` (draw the parameters, on the
generator's device) and ``apply_*`` (apply given parameters, on the images' device), so a caller can draw parameters for
a global batch and apply only its own slice of them.

The second section holds per-image, box-aware transforms for detection (:class:`DetectionTransform`), built on
albumentations. Albumentations is imported lazily inside them, so importing this module stays light.

The third section holds the per-image classification transform (:class:`ClassificationTransform`: random resized
crop + flip for training via albumentations, resize + central crop or ten crops for evaluation via torchvision).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClassificationTransform",
    "CropFlipParams",
    "CutoutParams",
    "DetectionTransform",
    "apply_crop_flip",
    "apply_cutout",
    "cutout",
    "normalize",
    "random_crop_flip",
    "resize_shortest_edge_size",
    "sample_crop_flip",
    "sample_cutout",
]


@dataclass(frozen=True)
class CropFlipParams:
    """Per-image crop offsets into the padded image (``dy``, ``dx`` in ``[0, 2 * pad]``) and horizontal-flip flags."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device | str) -> CropFlipParams:
        """The same parameters on ``device``."""
        return CropFlipParams(self.dy.to(device), self.dx.to(device), self.flip.to(device))

    def select(self, index: slice | torch.Tensor) -> CropFlipParams:
        """The parameters of a subset of the images (``index``: a slice, index tensor or boolean mask)."""
        return CropFlipParams(self.dy[index], self.dx[index], self.flip[index])


@dataclass(frozen=True)
class CutoutParams:
    """Per-image centres (row ``cy``, column ``cx``) of the cutout squares."""

    cy: torch.Tensor
    cx: torch.Tensor

    def to(self, device: torch.device | str) -> CutoutParams:
        """The same parameters on ``device``."""
        return CutoutParams(self.cy.to(device), self.cx.to(device))

    def select(self, index: slice | torch.Tensor) -> CutoutParams:
        """The parameters of a subset of the images (``index``: a slice, index tensor or boolean mask)."""
        return CutoutParams(self.cy[index], self.cx[index])


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected a batch N x C x H x W, got shape {tuple(images.shape)}")


def sample_crop_flip(n: int, pad: int, generator: torch.Generator) -> CropFlipParams:
    """Draw crop offsets in ``[0, 2 * pad]`` and p=0.5 horizontal flips for ``n`` images, on the generator's device."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    dev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    return CropFlipParams(dy, dx, flip)


def apply_crop_flip(images: torch.Tensor, params: CropFlipParams, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad``, crop the H x W window at (``dy``, ``dx``) and mirror it where ``flip``, per image."""
    _check_batch(images)
    n, c, h, w = images.shape
    if params.dy.shape[0] != n:
        raise ValueError(f"got crop parameters for {params.dy.shape[0]} images but {n} images")
    if n == 0:
        return images.clone()
    dev = images.device
    p = params.to(dev)
    dy, dx, flip = p.dy, p.dx, p.flip
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(0)[None, :], cols[None, :]) + dx[:, None]  # N x W
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None]  # N x H
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(images: torch.Tensor, pad: int = 4, *, generator: torch.Generator) -> torch.Tensor:
    """Random H x W crop of the zero-padded images plus a p=0.5 horizontal flip, independently per image."""
    _check_batch(images)
    return apply_crop_flip(images, sample_crop_flip(images.shape[0], pad, generator), pad)


def sample_cutout(n: int, height: int, width: int, generator: torch.Generator) -> CutoutParams:
    """Draw ``n`` cutout centres uniformly over an ``height`` x ``width`` image, on the generator's device."""
    dev = generator.device
    cy = torch.randint(0, height, (n,), generator=generator, device=dev)
    cx = torch.randint(0, width, (n,), generator=generator, device=dev)
    return CutoutParams(cy, cx)


def apply_cutout(images: torch.Tensor, params: CutoutParams, size: int) -> torch.Tensor:
    """Zero the ``size`` x ``size`` square centred at (``cy``, ``cx``) of each image, clipped at the border.

    The square spans rows ``cy - size // 2`` to ``cy - size // 2 + size - 1`` (likewise for columns), so it is exactly
    ``size`` x ``size`` wherever it does not cross the border. Works for any dtype and memory format.
    """
    _check_batch(images)
    n, _, h, w = images.shape
    if params.cy.shape[0] != n:
        raise ValueError(f"got cutout parameters for {params.cy.shape[0]} images but {n} images")
    if size <= 0 or n == 0:
        return images.clone()
    dev = images.device
    p = params.to(dev)
    cy, cx = p.cy, p.cx
    y0 = (cy - size // 2)[:, None]
    x0 = (cx - size // 2)[:, None]
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= y0) & (ys < y0 + size)  # N x H
    in_cols = (xs >= x0) & (xs < x0 + size)  # N x W
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # N x 1 x H x W
    out = images.clone(memory_format=torch.preserve_format)  # keeps e.g. channels_last
    return out.masked_fill_(mask, 0)


def cutout(images: torch.Tensor, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero a ``size`` x ``size`` square at a random centre of each image."""
    _check_batch(images)
    n, _, h, w = images.shape
    return apply_cutout(images, sample_cutout(n, h, w, generator), size)


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, computed in float32 and returned as ``dtype`` (optionally NHWC).

    ``mean``/``std`` are in [0, 1] units; pass them as float32 tensors already on the images' device to avoid a
    host-to-device copy per call.
    """
    _check_batch(images_uint8)
    c = images_uint8.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} entries (one per channel), got {len(mean)} and {len(std)}")
    dev = images_uint8.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, c, 1, 1)
    out = (images_uint8.to(torch.float32) / 255.0 - mean_t) / std_t
    out = out.to(dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Box-aware per-image transforms for detection (albumentations, imported lazily)
# ---------------------------------------------------------------------------------------------------------------------


def _albumentations() -> Any:
    """The albumentations module, imported on first use (without its network update check)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def resize_shortest_edge_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) when the shorter side goes to ``min_size`` with the longer side capped at ``max_size``.

    The rule of detectron2's ResizeShortestEdge and torchvision's GeneralizedRCNNTransform:
    ``scale = min_size / min(h, w)``; if ``max(h, w) * scale > max_size`` then ``scale = max_size / max(h, w)``; the new
    size is ``(round(h * scale), round(w * scale))`` (at least 1 pixel). An image of that size is left as it is by a
    GeneralizedRCNNTransform with the same (single) ``min_size`` and ``max_size``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if min_size <= 0 or max_size <= 0:
        raise ValueError(f"min_size and max_size must be positive, got {min_size} and {max_size}")
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class DetectionTransform:
    """Resize the shorter side (multi-scale in training) with the longer side capped, then flip: boxes follow along.

    ``__call__(image, boxes, labels)`` takes an H x W x 3 uint8 image, N x 4 float boxes (x1, y1, x2, y2 in pixels,
    'pascal_voc') and N labels (N may be 0) and returns the same three, transformed; boxes are clipped to the image.
    The shorter side goes to a size drawn from ``min_sizes`` with Python's ``random`` (training: a random choice per
    image; test: ``min_sizes[-1]``), capped so that the longer side is at most ``max_size``
    (:func:`resize_shortest_edge_size`); in training the result is mirrored horizontally with probability
    ``flip_prob``. All randomness comes from Python's ``random`` module, so ``random.seed`` makes it deterministic
    (DataLoader workers seed ``random`` per worker from the loader's generator).

    With a single size the model's GeneralizedRCNNTransform(min_size, max_size) then leaves the images as they are. For
    multi-scale training the model's own transform must not pick a size again (give it each batch's size, or skip its
    resize), since torchvision draws its own random min size in training.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, flip_prob: float, train: bool) -> None:
        sizes = [int(s) for s in ([min_sizes] if isinstance(min_sizes, int) else min_sizes)]
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"min_sizes must be a non-empty list of positive sizes, got {min_sizes!r}")
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.min_sizes = tuple(sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.train = bool(train)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_sizes={self.min_sizes}, max_size={self.max_size}, "
            f"flip_prob={self.flip_prob}, train={self.train})"
        )

    def sample(self, height: int, width: int) -> tuple[int, int, bool]:
        """Draw the output (height, width) and the flip flag for an image of ``height`` x ``width`` from ``random``."""
        min_size = random.choice(self.min_sizes) if self.train else self.min_sizes[-1]
        new_h, new_w = resize_shortest_edge_size(height, width, min_size, self.max_size)
        flip = self.train and random.random() < self.flip_prob
        return new_h, new_w, flip

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Transform one image (H x W x 3 uint8) with its N x 4 xyxy boxes and N labels."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(f"got {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        new_h, new_w, flip = self.sample(image.shape[0], image.shape[1])
        A = _albumentations()
        steps = [A.Resize(height=new_h, width=new_w)]
        if flip:
            steps.append(A.HorizontalFlip(p=1.0))
        bbox_params = A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=0.0, clip=True, filter_invalid_bboxes=True
        )
        out = A.Compose(steps, bbox_params=bbox_params)(image=image, bboxes=boxes, labels=labels)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return np.ascontiguousarray(out["image"]), out_boxes, out_labels


# ---------------------------------------------------------------------------------------------------------------------
# Per-image transforms for classification (Places365, ImageNet-style)
# ---------------------------------------------------------------------------------------------------------------------


def _as_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous H x W x 3 uint8 numpy array from a 3 x H x W uint8 tensor or an H x W x 3 uint8 array."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a 3 x H x W uint8 tensor, got {image.dtype} {tuple(image.shape)}")
        return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _as_chw_uint8(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 3 x H x W uint8 tensor from a 3 x H x W uint8 tensor or an H x W x 3 uint8 array."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(_as_hwc_uint8(image)).permute(2, 0, 1)
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a 3 x H x W uint8 tensor, got {image.dtype} {tuple(image.shape)}")
    return image


class ClassificationTransform:
    """ImageNet-style classification transform: uint8 image in, normalised float32 tensor out.

    Input: a 3 x H x W uint8 RGB tensor (what ``torchvision.io.decode_image`` returns) or an H x W x 3 uint8 array.

    - ``train=True``: albumentations ``RandomResizedCrop(size, scale, ratio)`` then ``HorizontalFlip(p=0.5)`` on the
      H x W x 3 array, then a 3 x size x size float tensor.
    - ``train=False``: the shorter side resized to ``resize`` (bilinear, antialiased), then the central
      ``size`` x ``size`` crop, with torchvision's tensor ops (``transforms.v2.functional.resize`` / ``center_crop``);
      with ``ten_crop=True`` a 10 x 3 x size x size tensor instead: the four corner crops and the central crop
      (top-left, top-right, bottom-left, bottom-right, centre: ``five_crop``), then the same five mirrored
      horizontally, so crop ``5 + k`` is crop ``k`` flipped (Caffe's oversampling order; the same ten crops as
      torchvision's ``ten_crop``, which lists the last five in the order of the mirrored image).

    The output is ``(x / 255 - mean) / std`` per channel (``mean``/``std`` in [0, 1] units; ImageNet's by default);
    with ``mean=None`` and ``std=None`` it is left in [0, 1] (for models that normalise their own input).

    Seeding: each training call draws one 32-bit seed from Python's global ``random`` module and re-seeds the
    albumentations pipeline with it (``Compose.set_random_seed``), so the crop and flip of an image depend only on the
    state of ``random``: ``random.seed(s)`` makes a sequence of calls reproducible, and DataLoader workers (whose
    ``random`` is seeded per worker from the loader's generator) are reproducible given the loader's seed. Evaluation
    draws nothing.
    """

    def __init__(
        self,
        train: bool,
        size: int = 224,
        resize: int = 256,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        std: Sequence[float] | None = (0.229, 0.224, 0.225),
        ten_crop: bool = False,
    ) -> None:
        if size <= 0 or resize <= 0:
            raise ValueError(f"size and resize must be positive, got {size} and {resize}")
        if not train and resize < size:
            raise ValueError(f"resize ({resize}) must be >= size ({size}) for the central crop")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None and (len(mean) != 3 or len(std) != 3):
            raise ValueError(f"mean and std need 3 entries (R, G, B), got {len(mean)} and {len(std)}")
        if ten_crop and train:
            raise ValueError("ten_crop is an evaluation transform (train=False)")
        self.train = bool(train)
        self.size = int(size)
        self.resize = int(resize)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.ten_crop = bool(ten_crop)
        self._compose: Any = None  # built on first use (lazy albumentations import; picklable before that)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={self.train}, size={self.size}, resize={self.resize}, scale={self.scale}, "
            f"ratio={self.ratio}, mean={self.mean}, std={self.std}, ten_crop={self.ten_crop})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compose"] = None  # rebuilt in the worker
        return state

    def _pipeline(self) -> Any:
        if self._compose is None:
            A = _albumentations()
            self._compose = A.Compose(
                [
                    A.RandomResizedCrop(size=(self.size, self.size), scale=self.scale, ratio=self.ratio),
                    A.HorizontalFlip(p=0.5),
                ]
            )
        return self._compose

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float32, normalised (or in [0, 1] without mean/std)."""
        if self.mean is None or self.std is None:
            return images.to(torch.float32).div_(255.0)
        return normalize(images, self.mean, self.std)

    def __call__(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Transform one uint8 RGB image (3 x H x W tensor or H x W x 3 array) into a float32 tensor."""
        if self.train:
            pipeline = self._pipeline()
            pipeline.set_random_seed(random.getrandbits(32))
            out = pipeline(image=_as_hwc_uint8(image))["image"]
            chw = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
            return self._to_float(chw[None])[0]
        from torchvision.transforms.v2 import functional as TF

        chw = _as_chw_uint8(image)
        resized = TF.resize(chw, [self.resize], antialias=True)
        if self.ten_crop:
            five = torch.stack(TF.five_crop(resized, [self.size, self.size]))
            return self._to_float(torch.cat([five, five.flip(-1)]))
        return self._to_float(TF.center_crop(resized, [self.size, self.size])[None])[0]
