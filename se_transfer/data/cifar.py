"""CIFAR-10/100: a safe reader of the official "python version" batches, a fake-data writer, a device-resident loader.

On-disk layout (the official archives, unpacked under a data root)::

    ROOT/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Each file is a Python-2 pickle of a dict. Batches hold ``data`` (N x 3072 uint8: the R plane, then G, then B, each
32 x 32 row-major) and ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100); the meta files hold
``label_names`` (CIFAR-10) or ``fine_label_names``/``coarse_label_names`` (CIFAR-100). The files are unpickled with an
unpickler that only resolves the few numpy globals an array needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write_bytes
from .common import FAKE_COLOURS, DatasetError
from .transforms import apply_crop_flip, apply_cutout, normalize, sample_crop_flip, sample_cutout

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarData",
    "CifarLoader",
    "DatasetError",
    "load_cifar",
    "write_fake_cifar",
]

CIFAR_MEAN: dict[str, tuple[float, float, float]] = {
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
"""Per-channel (R, G, B) mean of the training images, in [0, 1] units."""

CIFAR_STD: dict[str, tuple[float, float, float]] = {
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}
"""Per-channel (R, G, B) standard deviation of the training images, in [0, 1] units."""

_IMAGE_SIZE = 32
_ROW_LENGTH = 3 * _IMAGE_SIZE * _IMAGE_SIZE


@dataclass(frozen=True)
class _Layout:
    folder: str
    files: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    title: str


_LAYOUTS: dict[str, _Layout] = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        title="CIFAR-10",
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        files={"train": ("train",), "test": ("test",)},
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        title="CIFAR-100",
    ),
}


def _layout(dataset: str) -> _Layout:
    try:
        return _LAYOUTS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_LAYOUTS)}") from None


def _expected_layout(layout: _Layout) -> str:
    names = [*layout.files["train"], *layout.files["test"], layout.meta]
    return (
        f"expected the official {layout.title} 'python version' layout: ROOT/{layout.folder}/ containing "
        f"{', '.join(names)} (Python pickles of dicts; batches with 'data' N x {_ROW_LENGTH} uint8 and "
        f"'{layout.label_key}', the meta file with '{layout.names_key}')"
    )


@dataclass
class CifarData:
    """One split of CIFAR in memory: uint8 images N x 3 x 32 x 32 (RGB), int64 labels N, and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    num_classes: int
    dataset: str = ""

    def __len__(self) -> int:
        """Number of images."""
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------------------------------------- reading


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # arrays pickled with protocol 5
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _ForbiddenGlobalError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals needed to rebuild arrays and refuses every other global."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global; raise for anything else (nothing is imported for a refused global)."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobalError(
                f"refusing to load global '{module}.{name}' (only numpy array globals are allowed)"
            ) from None


def _as_str(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle_dict(path: Path, layout: _Layout) -> dict[str, Any]:
    """Unpickle ``path`` safely and return the dict with str keys, or raise DatasetError."""
    if not path.is_file():
        raise DatasetError(f"missing file {path}; {_expected_layout(layout)}")
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobalError as exc:
        raise DatasetError(f"unsafe or foreign pickle {path}: {exc}; {_expected_layout(layout)}") from None
    except Exception as exc:  # truncated / corrupt pickles raise a variety of exceptions
        raise DatasetError(
            f"cannot unpickle {path} ({type(exc).__name__}: {exc}); the file may be truncated or corrupt; "
            f"{_expected_layout(layout)}"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a dict; {_expected_layout(layout)}")
    return {_as_str(k): v for k, v in obj.items()}


def _get(d: dict[str, Any], key: str, path: Path, layout: _Layout) -> Any:
    if key not in d:
        raise DatasetError(f"{path} has no key '{key}' (keys: {sorted(map(str, d))}); {_expected_layout(layout)}")
    return d[key]


def _read_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle_dict(path, layout)
    data = _get(d, "data", path, layout)
    labels_obj = _get(d, layout.label_key, path, layout)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_LENGTH:
        desc = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise DatasetError(
            f"{path}: 'data' must be a uint8 numpy array of shape N x {_ROW_LENGTH}, got {desc}; "
            f"{_expected_layout(layout)}"
        )
    try:
        labels = np.asarray(labels_obj)
        ok = labels.ndim == 1 and (labels.size == 0 or np.issubdtype(labels.dtype, np.integer))
    except Exception:
        ok = False
    if not ok:
        raise DatasetError(
            f"{path}: '{layout.label_key}' must be a flat list of integers; {_expected_layout(layout)}"
        ) from None
    labels = labels.astype(np.int64)
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} '{layout.label_key}'; {_expected_layout(layout)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DatasetError(
            f"{path}: '{layout.label_key}' out of range [0, {layout.num_classes}) "
            f"(min {labels.min()}, max {labels.max()}); {_expected_layout(layout)}"
        )
    return data, labels


def _read_classes(path: Path, layout: _Layout) -> list[str]:
    d = _unpickle_dict(path, layout)
    names = _get(d, layout.names_key, path, layout)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DatasetError(f"{path}: '{layout.names_key}' must be a list of strings; {_expected_layout(layout)}")
    if len(names) != layout.num_classes:
        raise DatasetError(
            f"{path}: '{layout.names_key}' has {len(names)} names, expected {layout.num_classes}; "
            f"{_expected_layout(layout)}"
        )
    return [_as_str(n) for n in names]


def load_cifar(root: str | Path, dataset: str, split: str) -> CifarData:
    """Read one split ("train"/"test") of "cifar10"/"cifar100" from the official python-version files under root."""
    layout = _layout(dataset)
    if split not in layout.files:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    folder = Path(root).expanduser() / layout.folder
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}; {_expected_layout(layout)}")
    classes = _read_classes(folder / layout.meta, layout)
    batches = [_read_batch(folder / name, layout) for name in layout.files[split]]
    data = np.concatenate([b[0] for b in batches], axis=0)  # a fresh, writable, contiguous copy
    labels = np.concatenate([b[1] for b in batches], axis=0)
    images = torch.from_numpy(data).view(data.shape[0], 3, _IMAGE_SIZE, _IMAGE_SIZE)
    return CifarData(
        images=images,
        labels=torch.from_numpy(labels),
        classes=classes,
        num_classes=layout.num_classes,
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------------------------- writing


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


# ----------------------------------------------------------------------------------------------------------- loading


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from (seed, epoch), independent of any global RNG state."""
    words = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class CifarLoader:
    """Iterates a CIFAR split in batches straight from device memory, reproducibly per (seed, epoch).

    The whole uint8 set is moved to ``device`` once. ``batch_size`` is the GLOBAL batch size; it must be divisible by
    ``world_size`` and each rank gets ``batch_size // world_size`` images per batch.

    Training (``train=True``): each epoch draws a permutation and every augmentation parameter for the epoch from a CPU
    ``torch.Generator`` seeded from ``(seed, epoch)`` (so CPU and CUDA runs see the same images and a restarted run
    can reproduce any epoch). Every rank draws the same permutation and parameters for the whole global batch and
    keeps its contiguous slice ``[rank * B / world, (rank + 1) * B / world)``, so ``world_size`` ranks together see
    exactly what one process with the same global batch sees. Augmentation: random crop (zero padding ``pad``) and
    horizontal flip on the uint8 images, normalisation, then cutout if ``cutout > 0``. Cutout is applied after
    normalisation, as in DeVries & Taylor (2017), so the erased square equals the data set mean rather than black.
    ``drop_last`` defaults to True; if False, the last partial global batch is split as evenly as possible.

    Evaluation (``train=False``): no augmentation, no shuffling, no dropping. With ``world_size > 1`` each rank takes
    the strided shard ``rank, rank + world_size, rank + 2 * world_size, ...`` of the set; batch ``i`` of a rank holds
    the images of global batch ``i`` (indices ``[i * B, (i + 1) * B)``) whose index is ``rank`` modulo ``world_size``.
    All ranks therefore yield the same number of batches (the last one may be smaller, or empty if fewer than
    ``world_size`` images are left), and together they cover every image exactly once.
    """

    def __init__(
        self,
        data: CifarData,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        cutout: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        channels_last: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dtype: torch.dtype = torch.float32,
        pad: int = 4,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size != 0:
            raise ValueError(
                f"the global batch size {batch_size} must be divisible by world_size {world_size} "
                f"(each rank takes batch_size // world_size images)"
            )
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        if mean is None or std is None:
            key = data.dataset or {10: "cifar10", 100: "cifar100"}.get(data.num_classes, "")
            if key not in CIFAR_MEAN:
                raise ValueError("cannot tell which CIFAR statistics to use; pass mean and std explicitly")
            mean = CIFAR_MEAN[key] if mean is None else mean
            std = CIFAR_STD[key] if std is None else std
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.train = train
        self.seed = seed
        self.cutout = cutout
        self.rank = rank
        self.world_size = world_size
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = dtype
        self.pad = pad
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device)

    @property
    def num_samples(self) -> int:
        """Number of images in the whole split (all ranks)."""
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch (the same on every rank)."""
        n = self.num_samples
        if self.train and self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def _local(self, count: int) -> slice:
        """This rank's part of a global batch of ``count`` items."""
        return slice(self.rank * count // self.world_size, (self.rank + 1) * count // self.world_size)

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``(images, labels)`` batches of ``epoch`` on the device, from batch ``start_batch`` on.

        Starting at ``start_batch`` gives exactly the batches a fresh iteration of the same epoch yields after its first
        ``start_batch`` batches.
        """
        num_batches = len(self)
        if not 0 <= start_batch <= num_batches:
            raise ValueError(f"start_batch must be in [0, {num_batches}], got {start_batch}")
        if self.train:
            return self._train_iter(epoch, start_batch, num_batches)
        return self._eval_iter(start_batch, num_batches)

    def _train_iter(
        self, epoch: int, start_batch: int, num_batches: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen)
        crop = sample_crop_flip(n, self.pad, gen)  # parameters per position in the epoch's order
        erase = sample_cutout(n, self.images.shape[2], self.images.shape[3], gen) if self.cutout > 0 else None
        order = order.to(self.device)
        crop = crop.to(self.device)
        erase = erase.to(self.device) if erase is not None else None
        for b in range(start_batch, num_batches):
            lo = b * self.batch_size
            hi = min(lo + self.batch_size, n)
            local = self._local(hi - lo)
            positions = slice(lo + local.start, lo + local.stop)
            idx = order[positions]
            x = apply_crop_flip(self.images[idx], crop.select(positions), self.pad)
            x = normalize(x, self._mean_t, self._std_t, channels_last=self.channels_last, dtype=self.dtype)
            if erase is not None:
                x = apply_cutout(x, erase.select(positions), self.cutout)
            yield x, self.labels[idx]

    def _eval_iter(self, start_batch: int, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        for b in range(start_batch, num_batches):
            lo = b * self.batch_size
            hi = min(lo + self.batch_size, n)
            idx = torch.arange(lo + self.rank, hi, self.world_size, device=self.device)
            x = normalize(
                self.images[idx], self._mean_t, self._std_t, channels_last=self.channels_last, dtype=self.dtype
            )
            yield x, self.labels[idx]
