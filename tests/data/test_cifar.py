"""CIFAR reader/writer, batched augmentations and the device-resident loader."""

from __future__ import annotations

import math
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from se_transfer.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CifarData,
    CifarInput,
    CifarLoader,
    CropFlipParams,
    CutoutParams,
    DatasetError,
    apply_crop_flip,
    apply_cutout,
    cutout,
    load_cifar,
    normalize,
    per_rank_batch,
    random_crop_flip,
    sample_crop_flip,
    write_fake_cifar,
)
from se_transfer.data.demo.cifar import _dump_py2

CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", num_train=500, num_test=200, seed=0)
    write_fake_cifar(root, "cifar100", num_train=400, num_test=200, seed=0)
    return root


def _opcodes(path: Path) -> list[tuple[str, object]]:
    return [(op.name, arg) for op, arg, _ in pickletools.genops(path.read_bytes())]


def _py2_str(s: bytes) -> bytes:
    """A Python-2 ``str`` as cPickle protocol 2 writes it (SHORT_BINSTRING or BINSTRING)."""
    if len(s) < 256:
        return b"U" + bytes([len(s)]) + s
    return b"T" + struct.pack("<i", len(s)) + s


def _py2_uint8_matrix(raw: bytes, rows: int, cols: int) -> bytes:
    """Hand-written py2 numpy pickle opcodes of a rows x cols uint8 array (as numpy 1.x on Python 2 wrote it)."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05"
        b"(K\x01M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", cols) + b"\x86"
        b"cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89" + _py2_str(raw) + b"tb"
    )


# ------------------------------------------------------------------------------------------------ reading / writing


@pytest.mark.parametrize(
    ("dataset", "folder", "num_classes", "num_train", "num_test"),
    [("cifar10", "cifar-10-batches-py", 10, 500, 200), ("cifar100", "cifar-100-python", 100, 400, 200)],
)
def test_fake_data_loads(fake_root: Path, dataset: str, folder: str, num_classes: int, num_train: int, num_test: int):
    for split, n in (("train", num_train), ("test", num_test)):
        d = load_cifar(fake_root, dataset, split)
        assert d.images.shape == (n, 3, 32, 32) and d.images.dtype == torch.uint8
        assert d.labels.shape == (n,) and d.labels.dtype == torch.int64
        assert d.num_classes == num_classes and len(d.classes) == num_classes and len(d) == n
        assert all(isinstance(c, str) for c in d.classes)
        assert int(d.labels.min()) >= 0 and int(d.labels.max()) < num_classes
        assert torch.bincount(d.labels, minlength=num_classes).min() == n // num_classes  # balanced
    if dataset == "cifar10":
        assert load_cifar(fake_root, dataset, "test").classes[0] == "airplane"
    assert (fake_root / folder).is_dir()


def test_files_are_python2_pickles(fake_root: Path):
    folder = fake_root / "cifar-10-batches-py"
    for name in [*CIFAR10_FILES, "batches.meta"]:
        ops = _opcodes(folder / name)
        names = {op for op, _ in ops}
        assert ops[0] == ("PROTO", 2)
        assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "SHORT_BINBYTES", "BINBYTES"}, name
    ops = _opcodes(folder / "data_batch_1")
    strings = [(op, arg) for op, arg in ops if op in ("SHORT_BINSTRING", "BINSTRING")]
    keys = {arg for _, arg in strings}
    assert {"data", "labels", "filenames", "batch_label"} <= keys
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    big = [arg for op, arg in strings if op == "BINSTRING"]
    assert [len(b) for b in big] == [100 * 3072]  # the raw pixels are one py2 str
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["num_vis"] == 3072 and len(meta["label_names"]) == 10
    ops100 = _opcodes(fake_root / "cifar-100-python" / "train")
    keys100 = {arg for op, arg in ops100 if op in ("SHORT_BINSTRING", "BINSTRING")}
    assert {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"} <= keys100
    meta100 = pickle.loads((fake_root / "cifar-100-python" / "meta").read_bytes(), encoding="latin1")
    assert len(meta100["fine_label_names"]) == 100 and len(meta100["coarse_label_names"]) == 20


def test_round_trip_pixels(fake_root: Path, tmp_path: Path):
    folder = fake_root / "cifar-10-batches-py"
    raw = [pickle.loads((folder / n).read_bytes(), encoding="latin1") for n in CIFAR10_FILES[:5]]
    data = np.concatenate([r["data"] for r in raw])
    labels = sum((r["labels"] for r in raw), [])
    assert data.dtype == np.uint8 and data.shape == (500, 3072)
    d = load_cifar(fake_root, "cifar10", "train")
    assert d.labels.tolist() == labels
    assert torch.equal(d.images[:, 0].reshape(500, 1024), torch.from_numpy(data[:, :1024]))  # R plane
    assert torch.equal(d.images[:, 2].reshape(500, 1024), torch.from_numpy(data[:, 2048:]))  # B plane
    assert torch.equal(d.images[7, 1, 3], torch.from_numpy(data[7, 1024 + 3 * 32 : 1024 + 4 * 32]))  # G row 3

    # our writer + reader with a hand-made image: R plane = row index, G = column index + 100, B constant
    img = np.zeros((2, 3, 32, 32), np.uint8)
    img[:, 0] = np.arange(32)[:, None]
    img[:, 1] = np.arange(32)[None, :] + 100
    img[:, 2] = 250
    batch = {"data": img.reshape(2, 3072), "labels": [1, 9], "batch_label": "x", "filenames": ["a.png", "b.png"]}
    own = write_fake_cifar(tmp_path, "cifar10", num_train=10, num_test=10)
    _dump_py2(batch, own / "test_batch")
    back = pickle.loads((own / "test_batch").read_bytes(), encoding="latin1")
    assert np.array_equal(back["data"], img.reshape(2, 3072)) and back["labels"] == [1, 9]
    d = load_cifar(tmp_path, "cifar10", "test")
    assert d.labels.tolist() == [1, 9]
    assert d.images[0, 0, :, 0].tolist() == list(range(32)) and d.images[1, 0, 4].tolist() == [4] * 32
    assert d.images[0, 1, 0].tolist() == list(range(100, 132)) and (d.images[:, 2] == 250).all()


def test_write_is_deterministic(tmp_path: Path):
    a = write_fake_cifar(tmp_path / "a", "cifar10", num_train=50, num_test=20, seed=5)
    b = write_fake_cifar(tmp_path / "b", "cifar10", num_train=50, num_test=20, seed=5)
    c = write_fake_cifar(tmp_path / "c", "cifar10", num_train=50, num_test=20, seed=6)
    assert (a / "data_batch_2").read_bytes() == (b / "data_batch_2").read_bytes()
    assert (a / "data_batch_2").read_bytes() != (c / "data_batch_2").read_bytes()


def test_hand_written_python2_pickle_loads(tmp_path: Path):
    img = np.zeros((2, 3, 32, 32), np.uint8)
    img[0, 0], img[0, 1], img[0, 2] = 200, 10, 50
    img[1, 0] = np.arange(32, dtype=np.uint8)[None, :]  # R varies along columns
    img[1, 1] = 7
    img[1, 2] = np.arange(32, dtype=np.uint8)[:, None] * 2  # B varies along rows
    batch = (
        b"\x80\x02}q\x01(U\x04dataq\x02"
        + _py2_uint8_matrix(img.tobytes(), 2, 3072)
        + b"U\x06labelsq\x08]q\t(K\x03K\x07eU\x0bbatch_labelq\nU\x14testing batch 1 of 1q\x0b"
        + b"U\tfilenamesq\x0c]q\r(U\x05a.pngU\x05b.pnge"
        + b"u."
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = (
        b"\x80\x02}q\x01(U\x13num_cases_per_batchq\x02M\x10'U\x0blabel_namesq\x03]q\x04("
        + b"".join(_py2_str(n) for n in names)
        + b"eU\x07num_visq\x05M\x00\x0cu."
    )
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(batch)
    (folder / "batches.meta").write_bytes(meta)
    d = load_cifar(tmp_path, "cifar10", "test")
    assert d.labels.tolist() == [3, 7]
    assert d.classes == [n.decode() for n in names]
    assert torch.equal(d.images, torch.from_numpy(img))
    assert int(d.images[0, 0].min()) == 200 and int(d.images[0, 1].max()) == 10  # channel 0 is R
    assert d.images[1, 0, 5].tolist() == list(range(32))


# ------------------------------------------------------------------------------------------------------------ errors


def test_missing_folder(tmp_path: Path):
    with pytest.raises(DatasetError, match="cifar-100-python") as exc:
        load_cifar(tmp_path, "cifar100", "train")
    assert "meta" in str(exc.value) and "train" in str(exc.value)


def test_missing_batch_file(tmp_path: Path):
    folder = write_fake_cifar(tmp_path, "cifar10", num_train=20, num_test=10)
    (folder / "data_batch_3").unlink()
    load_cifar(tmp_path, "cifar10", "test")  # the test split does not need it
    with pytest.raises(DatasetError, match="data_batch_3") as exc:
        load_cifar(tmp_path, "cifar10", "train")
    msg = str(exc.value)
    assert all(name in msg for name in [*CIFAR10_FILES, "batches.meta"])  # states the expected layout


def test_truncated_file(tmp_path: Path):
    folder = write_fake_cifar(tmp_path, "cifar100", num_train=20, num_test=10)
    raw = (folder / "test").read_bytes()
    (folder / "test").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"cifar-100-python.test.*truncated"):
        load_cifar(tmp_path, "cifar100", "test")
    (folder / "test").write_bytes(b"")
    with pytest.raises(DatasetError, match="test"):
        load_cifar(tmp_path, "cifar100", "test")


def test_forbidden_global_is_refused_not_executed(tmp_path: Path):
    folder = write_fake_cifar(tmp_path, "cifar10", num_train=20, num_test=10)
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nq\x00" + _py2_str(command) + b"\x85R."
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(DatasetError, match=r"test_batch.*os\.system"):
        load_cifar(tmp_path, "cifar10", "test")
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": print}, protocol=2))  # __builtin__.print
    with pytest.raises(DatasetError, match=r"refusing to load global .*\.print"):
        load_cifar(tmp_path, "cifar10", "test")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ({"data": np.zeros((2, 3072), np.uint8)}, "no key 'labels'"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "shape N x 3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "out of range"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_bad_contents(tmp_path: Path, content: object, pattern: str):
    folder = write_fake_cifar(tmp_path, "cifar10", num_train=20, num_test=10)
    _dump_py2(content, folder / "test_batch")
    with pytest.raises(DatasetError, match=pattern) as exc:
        load_cifar(tmp_path, "cifar10", "test")
    assert "test_batch" in str(exc.value)


def test_bad_arguments(fake_root: Path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_cifar(fake_root, "cifar1000", "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_cifar(fake_root, "cifar10", "val")


# -------------------------------------------------------------------------------------------------------- transforms


def _rand_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # no zeros: padding is detectable


def test_random_crop_flip_windows():
    images = _rand_images(400)
    params = sample_crop_flip(400, 4, torch.Generator().manual_seed(1))
    out = apply_crop_flip(images, params, 4)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(400):
        dy, dx = int(params.dy[i]), int(params.dx[i])
        window = padded[i, :, dy : dy + 32, dx : dx + 32]
        assert torch.equal(out[i], window.flip(-1) if params.flip[i] else window)
    assert 150 < int(params.flip.sum()) < 250  # p = 0.5
    assert set(params.dy.tolist()) == set(range(9)) and set(params.dx.tolist()) == set(range(9))
    # the public one-shot function: same seed, same output; every output is a (flipped) window of the padded image
    a = random_crop_flip(images[:8], 4, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(images[:8], 4, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(images[:8], 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for i in range(8):
        candidates = [
            w
            for dy in range(9)
            for dx in range(9)
            for w in (padded[i, :, dy : dy + 32, dx : dx + 32], padded[i, :, dy : dy + 32, dx : dx + 32].flip(-1))
        ]
        assert sum(torch.equal(a[i], w) for w in candidates) == 1


def test_cutout_square():
    images = torch.full((5, 3, 32, 32), 255, dtype=torch.uint8)
    params = CutoutParams(torch.tensor([16, 0, 31, 2, 20]), torch.tensor([16, 0, 31, 30, 5]))
    out = apply_cutout(images, params, 8)
    # square rows/cols [c - 4, c + 4), clipped to the image
    expected_boxes = [(12, 20, 12, 20), (0, 4, 0, 4), (27, 32, 27, 32), (0, 6, 26, 32), (16, 24, 1, 9)]
    for i, (y0, y1, x0, x1) in enumerate(expected_boxes):
        zero = out[i] == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
        box = torch.zeros(32, 32, dtype=torch.bool)
        box[y0:y1, x0:x1] = True
        assert torch.equal(zero[0], box), i
    # random centres: every image has one axis-aligned, possibly clipped, size x size zero square
    images = _rand_images(64)
    a = cutout(images, 10, generator=torch.Generator().manual_seed(0))
    b = cutout(images, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    for i in range(64):
        zero = (a[i] == 0).all(0)
        ys, xs = torch.nonzero(zero, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert zero.sum() == h * w and h <= 10 and w <= 10
        assert h == 10 or int(ys.min()) == 0 or int(ys.max()) == 31
        assert w == 10 or int(xs.min()) == 0 or int(xs.max()) == 31
        assert torch.equal(a[i][:, ~zero], images[i][:, ~zero])  # the rest is untouched
    # works after normalisation as well (float, channels_last)
    x = normalize(images[:4], CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"], channels_last=True)
    y = apply_cutout(x, CutoutParams(torch.tensor([5, 5, 5, 5]), torch.tensor([5, 5, 5, 5])), 4)
    assert (y[:, :, 3:7, 3:7] == 0).all() and torch.equal(y[:, :, 8:], x[:, :, 8:])


def test_normalize():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)
    x = normalize(images, mean, std)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 4) and x.is_contiguous()
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 3.0, (128 / 255 - 0.1) / 0.2]))
    y = normalize(images, mean, std, channels_last=True, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="per channel"):
        normalize(images, (0.5,), (0.5,))


def test_crop_flip_params_select():
    p = CropFlipParams(torch.arange(6), torch.arange(6) + 1, torch.tensor([True, False] * 3))
    q = p.select(slice(2, 4))
    assert q.dy.tolist() == [2, 3] and q.dx.tolist() == [3, 4] and q.flip.tolist() == [True, False]


# ------------------------------------------------------------------------------------------------------------ loader


def _indexed(n: int) -> CifarData:
    """A data set whose labels are the image indices, so batches can be traced back to images."""
    return CifarData(images=_rand_images(n, seed=7), labels=torch.arange(n), classes=[], num_classes=10)


def _collect(it) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for x, y in it:
        xs.append(x)
        ys.append(y)
    return xs, ys


def test_loader_resume_mid_epoch():
    loader = CifarLoader(_indexed(300), 32, True, seed=3, inputs=CifarInput(cutout=8))
    assert len(loader) == 300 // 32
    full_x, full_y = _collect(loader.epoch_iter(2))
    tail_x, tail_y = _collect(loader.epoch_iter(2, start_batch=5))
    assert len(full_x) == 9 and len(tail_x) == 4
    for a, b in zip(full_x[5:], tail_x):
        assert torch.equal(a, b)
    for a, b in zip(full_y[5:], tail_y):
        assert torch.equal(a, b)
    again_x, _ = _collect(CifarLoader(_indexed(300), 32, True, seed=3, inputs=CifarInput(cutout=8)).epoch_iter(2))
    assert all(torch.equal(a, b) for a, b in zip(full_x, again_x))  # a fresh process reproduces the epoch
    assert list(loader.epoch_iter(2, start_batch=9)) == []
    with pytest.raises(ValueError, match="start_batch"):
        next(loader.epoch_iter(2, start_batch=10))


def test_loader_epochs_differ_and_cover():
    loader = CifarLoader(_indexed(256), 64, True, seed=0)
    orders = [torch.cat(_collect(loader.epoch_iter(e))[1]) for e in range(3)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(256))  # a permutation
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    other_seed = torch.cat(_collect(CifarLoader(_indexed(256), 64, True, seed=1).epoch_iter(0))[1])
    assert not torch.equal(orders[0], other_seed)


@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_two_ranks_equal_one(drop_last: bool):
    data = _indexed(203)
    kwargs = dict(seed=11, drop_last=drop_last, inputs=CifarInput(cutout=6, channels_last=True))
    single = CifarLoader(data, 32, True, **kwargs)
    ranks = [CifarLoader(data, 16, True, rank=r, world_size=2, **kwargs) for r in range(2)]  # 16 per rank
    assert len(single) == len(ranks[0]) == len(ranks[1]) == (6 if drop_last else 7)
    for epoch in (0, 4):
        sx, sy = _collect(single.epoch_iter(epoch))
        r0x, r0y = _collect(ranks[0].epoch_iter(epoch))
        r1x, r1y = _collect(ranks[1].epoch_iter(epoch))
        for i in range(len(sx)):
            assert torch.equal(torch.cat([r0x[i], r1x[i]]), sx[i])
            assert torch.equal(torch.cat([r0y[i], r1y[i]]), sy[i])
        assert r0x[0].shape == (16, 3, 32, 32) and r0x[0].is_contiguous(memory_format=torch.channels_last)
    if not drop_last:
        assert sx[-1].shape[0] == 203 - 6 * 32 and r0x[-1].shape[0] + r1x[-1].shape[0] == 11


def test_loader_applies_augmentation():
    data = _indexed(64)
    x, y = next(CifarLoader(data, 64, True, seed=0, inputs=CifarInput(mean=(0.0,) * 3, std=(1.0,) * 3)).epoch_iter(0))
    plain = data.images[y].float() / 255
    assert not torch.equal(x, plain)  # cropped / flipped
    assert (x == 0).float().mean() > 0.01  # zero padding shows up
    x_eval, y_eval = next(
        CifarLoader(data, 64, False, inputs=CifarInput(mean=(0.0,) * 3, std=(1.0,) * 3)).epoch_iter(0)
    )
    assert torch.equal(y_eval, torch.arange(64)) and torch.equal(x_eval, data.images.float() / 255)


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_loader_covers_each_image_once(world_size: int):
    data = _indexed(500)
    data.dataset = "cifar100"
    loaders = [CifarLoader(data, 96 // world_size, False, rank=r, world_size=world_size) for r in range(world_size)]
    seen: list[int] = []
    for r, loader in enumerate(loaders):
        assert len(loader) == math.ceil(500 / 96)
        xs, ys = _collect(loader.epoch_iter(0))
        labels = torch.cat(ys)
        assert labels.tolist() == list(range(r, 500, world_size))  # strided shard, in order
        expected = normalize(data.images[labels], CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"])
        assert torch.equal(torch.cat(xs), expected)  # no augmentation
        seen += labels.tolist()
    assert sorted(seen) == list(range(500))


def test_loader_errors():
    data = _indexed(50)
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH 30 must be divisible by 4 processes"):
        per_rank_batch("SOLVER.IMS_PER_BATCH", 30, 4)  # the global batch of the config, split as for every loader
    with pytest.raises(ValueError, match="per rank"):
        CifarLoader(data, 0, True, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        CifarLoader(data, 32, True, rank=2, world_size=2)


def test_small_cnn_learns_fake_cifar10(fake_root: Path):
    torch.manual_seed(0)
    train = load_cifar(fake_root, "cifar10", "train")
    test = load_cifar(fake_root, "cifar10", "test")
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loader = CifarLoader(train, 50, True, seed=0)
    for epoch in range(12):
        for x, y in loader.epoch_iter(epoch):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in CifarLoader(test, 100, False).epoch_iter(0):
            correct += int((net(x).argmax(1) == y).sum())
    assert correct / len(test) > 0.5  # chance: 0.1; the set is made so that nothing reaches 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loader_matches_cpu():
    data = _indexed(150)
    for train in (True, False):
        kwargs = dict(seed=5, cutout=8, channels_last=True)
        cpu = CifarLoader(data, 32, train, device="cpu", **kwargs)
        gpu = CifarLoader(data, 32, train, device="cuda", **kwargs)
        assert gpu.images.is_cuda
        for (xc, yc), (xg, yg) in zip(cpu.epoch_iter(1), gpu.epoch_iter(1)):
            assert xg.is_cuda and yg.is_cuda
            assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
