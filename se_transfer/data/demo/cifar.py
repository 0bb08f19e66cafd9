"""A generated set in the official CIFAR-10/100 python-pickle format (Python-2 pickles): ``write_fake_cifar``."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...io import atomic_write_bytes
from ..cifar import _IMAGE_SIZE, _ROW_LENGTH, _layout
from ..common import FAKE_COLOURS


class _Py2Global:
    """A global written under a fixed (Python-2 era) name, e.g. ``numpy.core.multiarray._reconstruct``."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> Any:
        raise TypeError(f"{self.module}.{self.name} is a pickling marker, not callable")


_PY2_RECONSTRUCT = _Py2Global("numpy.core.multiarray", "_reconstruct")


_PY2_NDARRAY = _Py2Global("numpy", "ndarray")


_PY2_DTYPE = _Py2Global("numpy", "dtype")


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes what Python 2's cPickle wrote for CIFAR: py2 ``str`` and py2-numpy arrays.

    ``str`` and ``bytes`` both become Python-2 byte strings (SHORT_BINSTRING/BINSTRING), numpy arrays become
    ``numpy.core.multiarray._reconstruct`` + a ``__setstate__`` tuple whose raw data is such a byte string.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, protocol=2)

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(data)) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def _save_py2_global(self, obj: _Py2Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str
    dispatch[_Py2Global] = _save_py2_global

    def reducer_override(self, obj: Any) -> Any:
        """Reduce numpy arrays and dtypes the way Python-2 numpy did; everything else the usual way."""
        if isinstance(obj, np.ndarray):
            if obj.dtype.fields is not None or obj.dtype.hasobject:
                raise pickle.PicklingError("only plain numeric numpy arrays can be written")
            state = (1, tuple(int(s) for s in obj.shape), obj.dtype, False, np.ascontiguousarray(obj).tobytes())
            return _PY2_RECONSTRUCT, (_PY2_NDARRAY, (0,), b"b"), state
        if isinstance(obj, np.dtype):
            _, (descr, _align, _copy), state = obj.__reduce__()
            return _PY2_DTYPE, (descr, 0, 1), state
        if isinstance(obj, np.generic):
            raise pickle.PicklingError(f"convert numpy scalar {obj!r} to a Python number before writing")
        return NotImplemented


def _dump_py2(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf).dump(obj)
    atomic_write_bytes(path, buf.getvalue())


_CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pattern(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A 32 x 32 mask in [0, 1] of one of ten shift- and mirror-robust patterns, at a random phase."""
    yy, xx = np.mgrid[0:_IMAGE_SIZE, 0:_IMAGE_SIZE].astype(np.float32)
    oy, ox = rng.integers(0, 16, size=2)
    if kind in (0, 1, 2, 3, 8, 9):  # stripes: horizontal (even kinds) or vertical (odd), period 8, 4 or 16
        period = {0: 8, 1: 8, 2: 4, 3: 4, 8: 16, 9: 16}[kind]
        coord = yy + oy if kind % 2 == 0 else xx + ox
        return ((coord % period) < period / 2).astype(np.float32)
    if kind in (4, 5):  # checkerboards with cells of 4 or 2 pixels
        cell = 4 if kind == 4 else 2
        return ((((yy + oy) // cell) + ((xx + ox) // cell)) % 2).astype(np.float32)
    cy, cx = 15.5 + rng.uniform(-4, 4, size=2)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if kind == 6:  # concentric rings
        return ((r % 8) < 4).astype(np.float32)
    return (r < 9).astype(np.float32)  # kind 7: a large disc


def _fake_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """N x 3072 uint8 images whose pattern (CIFAR-10) or pattern and colour (CIFAR-100) encode the class.

    Made hard enough that a demo's curves mean something: CIFAR-10's colours are drawn at random (only the pattern
    tells the class), a second pattern of another class is blended in at a random weight (the class's own pattern
    dominates in about 85% of the images, so no model reaches 100%), with random contrast and strong noise.
    """
    out = np.empty((labels.shape[0], 3, _IMAGE_SIZE, _IMAGE_SIZE), dtype=np.uint8)
    for i, c in enumerate(labels.tolist()):
        kind = c % 10 if num_classes <= 10 else c // 10
        colour_index = int(rng.integers(0, 10)) if num_classes <= 10 else c % 10
        colour = FAKE_COLOURS[colour_index] * rng.uniform(0.8, 1.2, size=3)
        other = (kind + int(rng.integers(1, 10))) % 10
        w = rng.uniform(0.4, 1.0)
        mask = w * _pattern(kind, rng) + (1.0 - w) * _pattern(other, rng)
        fg = colour * rng.uniform(0.7, 1.0)
        bg = colour * rng.uniform(0.1, 0.45)
        img = bg[:, None, None] + (fg - bg)[:, None, None] * mask[None]
        img = img + rng.normal(0.0, 28.0, size=img.shape)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out.reshape(labels.shape[0], _ROW_LENGTH)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def write_fake_cifar(
    root: str | Path,
    dataset: str,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a small learnable fake data set in the exact official on-disk format; return its folder under root.

    The files are Python-2 pickles like the real ones (protocol 2, py2 byte strings, py2-numpy arrays). Each class has
    its own pattern (stripes, checkerboard, rings, disc; CIFAR-100: pattern and colour) at a random phase, blended
    with another class's pattern, random contrast and noise: a small CNN learns it in minutes to about 80% top-1, not
    100% (see ``_fake_images``). Defaults: CIFAR-10 1000 train / 500 test; CIFAR-100 2000 train / 1000 test.
    Deterministic in ``seed``.
    """
    layout = _layout(dataset)
    num_train = (1000 if dataset == "cifar10" else 2000) if num_train is None else num_train
    num_test = (500 if dataset == "cifar10" else 1000) if num_test is None else num_test
    if num_train < 0 or num_test < 0:
        raise ValueError("num_train and num_test must be >= 0")
    folder = Path(root).expanduser() / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, layout.num_classes]))
    k = layout.num_classes
    train_labels = _balanced_labels(num_train, k, rng)
    train_images = _fake_images(train_labels, k, rng)
    test_labels = _balanced_labels(num_test, k, rng)
    test_images = _fake_images(test_labels, k, rng)

    def filenames(prefix: str, start: int, n: int) -> list[str]:
        return [f"fake_{dataset}_{prefix}_{start + j:05d}.png" for j in range(n)]

    if dataset == "cifar10":
        bounds = np.linspace(0, num_train, 6).round().astype(int)
        for b in range(5):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            batch = {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": train_labels[lo:hi].tolist(),
                "data": train_images[lo:hi],
                "filenames": filenames("train", lo, hi - lo),
            }
            _dump_py2(batch, folder / f"data_batch_{b + 1}")
        test = {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels.tolist(),
            "data": test_images,
            "filenames": filenames("test", 0, num_test),
        }
        _dump_py2(test, folder / "test_batch")
        meta = {"num_cases_per_batch": int(bounds[1] - bounds[0]), "label_names": list(_CIFAR10_NAMES), "num_vis": 3072}
        _dump_py2(meta, folder / "batches.meta")
    else:
        for split, labels, images in (("train", train_labels, train_images), ("test", test_labels, test_images)):
            batch = {
                "filenames": filenames(split, 0, labels.shape[0]),
                "batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": images,
            }
            _dump_py2(batch, folder / split)
        meta = {
            "fine_label_names": [f"fake_class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"fake_superclass_{i:02d}" for i in range(20)],
        }
        _dump_py2(meta, folder / "meta")
    return folder
