"""Batched tensor augmentations: the single place where augmentations live.

Everything here works on a whole batch at once (N x C x H x W) on any device with plain torch ops, and draws its
randomness from an explicit ``torch.Generator`` so that the same generator state gives the same augmentation (this is
what makes a resumed run bit-exact). Each random transform is split into ``sample_*`` (draw the parameters, on the
generator's device) and ``apply_*`` (apply given parameters, on the images' device), so a caller can draw parameters for
a global batch and apply only its own slice of them. Albumentations-based transforms for the other tasks (detection,
scene classification) will be added to this module later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CropFlipParams",
    "CutoutParams",
    "apply_crop_flip",
    "apply_cutout",
    "cutout",
    "normalize",
    "random_crop_flip",
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
