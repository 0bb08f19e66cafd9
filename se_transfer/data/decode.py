"""Image decoding: any file to RGB (grayscale, CMYK and palette images included), as numpy or as a tensor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .common import DatasetError


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
