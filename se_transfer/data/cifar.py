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

import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import DatasetError
from .transforms import apply_crop_flip, apply_cutout, normalize, sample_crop_flip, sample_cutout

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarData",
    "CifarLoader",
    "DatasetError",
    "load_cifar",
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


# ----------------------------------------------------------------------------------------------------------- loading


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from (seed, epoch), independent of any global RNG state."""
    words = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@dataclass(frozen=True)
class CifarInput:
    """How CIFAR images become network inputs: augmentation (training only) and normalisation.

    ``mean``/``std``: per-channel statistics in [0, 1] (None: the data set's own, ``CIFAR_MEAN``/``CIFAR_STD``);
    ``pad``: zero padding of the random crop; ``cutout``: side of the erased square (0: none); ``channels_last`` and
    ``dtype``: the layout and type of the batches."""

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    pad: int = 4
    cutout: int = 0
    channels_last: bool = False
    dtype: torch.dtype = torch.float32


class CifarLoader:
    """Iterates a CIFAR split in batches straight from device memory, reproducibly per (seed, epoch).

    The whole uint8 set is moved to ``device`` once. ``batch_size`` is the batch of this rank, as for every loader
    of the toolkit; the global batch is ``batch_size * world_size``. ``inputs`` says how images are augmented and
    normalised (:class:`CifarInput`).

    Training (``train=True``): each epoch draws a permutation and every augmentation parameter for the epoch from a CPU
    ``torch.Generator`` seeded from ``(seed, epoch)`` (so CPU and CUDA runs see the same images and a restarted run
    can reproduce any epoch). Every rank draws the same permutation and parameters for the whole global batch and
    keeps its contiguous slice ``[rank * B, (rank + 1) * B)`` (B the per-rank batch), so ``world_size`` ranks together
    see exactly what one process with the global batch sees. Augmentation: random crop (zero padding ``pad``) and
    horizontal flip on the uint8 images, normalisation, then cutout if ``cutout > 0``. Cutout is applied after
    normalisation, as in DeVries & Taylor (2017), so the erased square equals the data set mean rather than black.
    ``drop_last`` defaults to True; if False, the last partial global batch is split as evenly as possible.

    Evaluation (``train=False``): no augmentation, no shuffling, no dropping. With ``world_size > 1`` each rank takes
    the strided shard ``rank, rank + world_size, rank + 2 * world_size, ...`` of the set; batch ``i`` of a rank holds
    the images of global batch ``i`` (indices ``[i * G, (i + 1) * G)``, G the global batch) whose index is ``rank``
    modulo ``world_size``. All ranks therefore yield the same number of batches (the last one may be smaller, or
    empty if fewer than ``world_size`` images are left), and together they cover every image exactly once.
    """

    def __init__(
        self,
        data: CifarData,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        inputs: CifarInput | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size (per rank) must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        inputs = inputs or CifarInput()
        if inputs.cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {inputs.cutout}")
        mean, std = inputs.mean, inputs.std
        if mean is None or std is None:
            key = data.dataset or {10: "cifar10", 100: "cifar100"}.get(data.num_classes, "")
            if key not in CIFAR_MEAN:
                raise ValueError("cannot tell which CIFAR statistics to use; pass mean and std explicitly")
            mean = CIFAR_MEAN[key] if mean is None else mean
            std = CIFAR_STD[key] if std is None else std
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device, torch.int64)
        self.batch_size = batch_size  # per rank, as the argument
        self.global_batch_size = batch_size * world_size  # what one step of all ranks together sees
        self.train = train
        self.seed = seed
        self.cutout = inputs.cutout
        self.rank = rank
        self.world_size = world_size
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = inputs.channels_last
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = inputs.dtype
        self.pad = inputs.pad
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
            return n // self.global_batch_size
        return math.ceil(n / self.global_batch_size)

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
            lo = b * self.global_batch_size
            hi = min(lo + self.global_batch_size, n)
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
            lo = b * self.global_batch_size
            hi = min(lo + self.global_batch_size, n)
            idx = torch.arange(lo + self.rank, hi, self.world_size, device=self.device)
            x = normalize(
                self.images[idx], self._mean_t, self._std_t, channels_last=self.channels_last, dtype=self.dtype
            )
            yield x, self.labels[idx]
