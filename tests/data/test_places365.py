"""Places365: list reader, fake-tree writer, image decoding, the classification transform, loaders, benchmark."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from se_transfer.classification.places_benchmark import benchmark_model_step
from se_transfer.cli import benchmark_places_main
from se_transfer.data import (
    ClassificationTransform,
    DatasetError,
    Places365,
    ResumableDistributedSampler,
    benchmark_input_pipeline,
    build_classification_loader,
    read_places365_categories,
    read_rgb_tensor,
    resumable_batches,
    write_fake_places365,
)

CATEGORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "places365" / "categories_places365.txt"
needs_real_list = pytest.mark.skipif(not CATEGORIES.is_file(), reason=f"{CATEGORIES} not present")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CATEGORIES.is_file():
        pytest.skip(f"{CATEGORIES} not present")
    root = tmp_path_factory.mktemp("places_real")
    return write_fake_places365(
        root,
        classes_file=CATEGORIES,
        per_class_train=1,
        per_class_val=1,
        image_size=(20, 24),
        split_sets=("train-standard", "train-challenge", "val"),
    )


@pytest.fixture()
def small_tree(tmp_path: Path) -> Path:
    """Generated names, 4 classes, 3 train and 2 val images per class, in the 256 folders."""
    return write_fake_places365(
        tmp_path / "places", num_classes=4, per_class_train=3, per_class_val=2, image_size=(40, 48)
    )


# --------------------------------------------------------------------------------------------------------- reading


@needs_real_list
def test_real_category_list_round_trip(real_tree: Path) -> None:
    names = read_places365_categories(CATEGORIES)
    assert len(names) == 365 and names[0] == "/a/airfield" and names[1] == "/a/airplane_cabin"
    ds = Places365(real_tree, "train-standard")
    assert ds.classes == names and ds.num_classes == 365 and len(ds) == 365
    assert ds.stats["missing_images"] == 0 and ds.stats["images"] == 365
    path, label = ds.samples[0]
    assert path == str(real_tree / "data_256_standard" / "a" / "airfield" / "00000001.jpg") and label == 0
    for p, lab in ds.samples[::37]:
        assert Path(p).is_file()
        assert Path(p).parent.relative_to(real_tree / "data_256_standard").as_posix() == ds.classes[lab].strip("/")
    assert ds.targets == list(range(365))
    image, label = ds[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 24) and label == 5

    first = (real_tree / "places365_train_standard.txt").read_text().splitlines()[0]
    assert first == "/a/airfield/00000001.jpg 0"


@needs_real_list
def test_each_split(real_tree: Path) -> None:
    challenge = Places365(real_tree, "train-challenge")
    assert challenge.image_dir == real_tree / "data_256_challenge" and len(challenge) == 365
    val = Places365(real_tree, "val")
    assert val.image_dir == real_tree / "val_256" and len(val) == 365
    lines = (real_tree / "places365_val.txt").read_text().splitlines()
    assert lines[0].startswith("Places365_val_00000001.jpg ")
    assert val.targets == [int(line.split()[1]) for line in lines]
    assert sorted(val.targets) == list(range(365))  # one per class, shuffled
    assert val.targets != list(range(365))
    assert Path(val.samples[0][0]).name == "Places365_val_00000001.jpg"
    with pytest.raises(ValueError, match="unknown Places365 split"):
        Places365(real_tree, "test")


def test_small_vs_large_folders(tmp_path: Path) -> None:
    large = write_fake_places365(tmp_path / "large", num_classes=3, per_class_train=1, image_size=(16, 16), small=False)
    assert (large / "data_large_standard").is_dir() and (large / "val_large").is_dir()
    assert not (large / "data_256_standard").exists()
    ds = Places365(large, "train-standard", small=False, num_classes=None)
    assert ds.image_dir == large / "data_large_standard" and len(ds) == 3
    assert Places365(large, "val", small=False, num_classes=None).image_dir == large / "val_large"
    with pytest.raises(DatasetError, match=r"data_256_standard.*small=False"):
        Places365(large, "train-standard", small=True, num_classes=None)


def test_generated_names_and_class_count(small_tree: Path) -> None:
    ds = Places365(small_tree, "train-standard", num_classes=None)
    assert ds.classes == ["/c/class_000", "/c/class_001", "/c/class_002", "/c/class_003"]
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(DatasetError, match=r"categories_places365.txt lists 4 categories, expected 365"):
        Places365(small_tree, "train-standard")
    # deterministic writer: the same seed writes the same bytes
    again = write_fake_places365(small_tree.parent / "again", num_classes=4, per_class_train=3, per_class_val=2,
                                 image_size=(40, 48))  # fmt: skip
    rel = "data_256_standard/c/class_002/00000003.jpg"
    assert (again / rel).read_bytes() == (small_tree / rel).read_bytes()


def test_fake_images_depend_on_class(small_tree: Path) -> None:
    ds = Places365(small_tree, "train-standard", num_classes=None)
    mean_colour = [ds[i][0].float().mean(dim=(1, 2)) for i in range(len(ds))]
    within = (mean_colour[0] - mean_colour[1]).abs().max()
    between = (mean_colour[0] - mean_colour[3]).abs().max()
    assert between > within


@pytest.mark.parametrize(
    ("line", "problem"),
    [("/c/class_000/broken.jpg", "malformed entry"), ("/c/class_000/x.jpg 4", "label out of range"),
     ("/c/class_000/x.jpg -1", "label out of range"), ("/c/class_000/x.jpg one", "malformed entry"),
     ("a b 1", "malformed entry")],
)  # fmt: skip
def test_malformed_list_line(small_tree: Path, line: str, problem: str) -> None:
    list_file = small_tree / "places365_train_standard.txt"
    lines = list_file.read_text().splitlines()
    lines.insert(2, line)
    list_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        Places365(small_tree, "train-standard", num_classes=None)
    msg = str(info.value)
    assert str(list_file) in msg and "line 3" in msg and repr(line) in msg and problem in msg


def test_malformed_category_list(small_tree: Path) -> None:
    cat_file = small_tree / "categories_places365.txt"
    cat_file.write_text("/a/x 0\n/b/y 2\n")
    with pytest.raises(DatasetError, match=r"categories_places365.txt, line 2: category id 2 in '/b/y 2', expected 1"):
        Places365(small_tree, "val", num_classes=None)
    cat_file.write_text("/a/x 0\n/a/x 1\n")
    with pytest.raises(DatasetError, match="line 2: category '/a/x' repeats line 1"):
        Places365(small_tree, "val", num_classes=None)
    cat_file.write_text("/a/x 0\nnoid\n")
    with pytest.raises(DatasetError, match="line 2: malformed category 'noid'"):
        Places365(small_tree, "val", num_classes=None)


def test_missing_list_file(small_tree: Path) -> None:
    (small_tree / "places365_val.txt").unlink()
    with pytest.raises(DatasetError) as info:
        Places365(small_tree, "val", num_classes=None)
    msg = str(info.value)
    assert str(small_tree / "places365_val.txt") in msg
    assert "expected the Places365 layout" in msg and "data_256_standard" in msg and "val_256" in msg
    with pytest.raises(DatasetError, match="places365_train_challenge.txt"):
        Places365(small_tree, "train-challenge", num_classes=None)
    with pytest.raises(DatasetError, match="data root .* not found"):
        Places365(small_tree / "nowhere", "val", num_classes=None)


def test_missing_image(small_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = small_tree / "data_256_standard" / "c" / "class_001" / "00000002.jpg"
    gone.unlink()
    with pytest.raises(DatasetError) as info:
        Places365(small_tree, "train-standard", num_classes=None)
    assert str(gone) in str(info.value) and "1 of 12" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="se_transfer.data.places365"):
        ds = Places365(small_tree, "train-standard", num_classes=None, skip_missing=True)
    assert ds.stats["missing_images"] == 1 and len(ds) == 11
    assert str(gone) not in [p for p, _ in ds.samples]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(gone) in warnings[0].getMessage()


# --------------------------------------------------------------------------------------------------------- decoding


def _pattern_rgb(h: int = 30, w: int = 40) -> Image.Image:
    arr = (np.add.outer(np.arange(h), np.arange(w)) * 5 % 256).astype(np.uint8)
    return Image.fromarray(np.stack([arr, 255 - arr, arr // 2], axis=2), "RGB")


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGB"])
def test_jpeg_modes_decode_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"img_{mode}.jpg"
    _pattern_rgb().convert(mode).save(path, format="JPEG", quality=95)
    assert Image.open(path).mode == mode
    image = read_rgb_tensor(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    reference = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert (image.int() - reference.int()).abs().max() <= 2
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_decode_fallback_and_errors(tmp_path: Path) -> None:
    gray16 = tmp_path / "gray16.png"
    Image.fromarray((np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)).save(gray16)
    image = read_rgb_tensor(gray16)  # torchvision gives uint16 here; PIL's conversion takes over
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 10)
    bmp = tmp_path / "img.bmp"
    _pattern_rgb().save(bmp)
    assert torch.equal(read_rgb_tensor(bmp), torch.from_numpy(np.array(_pattern_rgb())).permute(2, 0, 1))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match=r"bad\.jpg cannot be decoded"):
        read_rgb_tensor(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.jpg"):
        read_rgb_tensor(empty)
    with pytest.raises(DatasetError, match=r"nothere\.jpg not found"):
        read_rgb_tensor(tmp_path / "nothere.jpg")


def test_unreadable_image_in_dataset(small_tree: Path) -> None:
    ds = Places365(small_tree, "val", num_classes=None)
    Path(ds.image_path(1)).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=ds.image_path(1)):
        ds[1]


# --------------------------------------------------------------------------------------------------------- transforms


def _image(h: int = 300, w: int = 400, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_train_transform_shape_and_seed() -> None:
    t = ClassificationTransform(train=True)
    img = _image()
    random.seed(3)
    a = [t(img) for _ in range(3)]
    random.seed(3)
    b = [t(img) for _ in range(3)]
    assert all(x.shape == (3, 224, 224) and x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    random.seed(3)
    c = t(img.permute(1, 2, 0).numpy())  # H x W x 3 arrays are accepted too
    assert torch.equal(c, a[0])
    assert -3.0 < float(a[0].min()) and float(a[0].max()) < 3.0  # normalised


def test_train_transform_full_crop_is_resize_or_flip() -> None:
    """scale=(1, 1), ratio=(1, 1) on a square image: the crop is the whole image, only the flip is random."""
    t = ClassificationTransform(train=True, size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), mean=None, std=None)
    img = _image(64, 64)
    outs = []
    for s in range(8):
        random.seed(s)
        outs.append(t(img))
    expected = img.float() / 255.0
    assert all(torch.equal(o, expected) or torch.equal(o, expected.flip(-1)) for o in outs)
    assert any(torch.equal(o, expected) for o in outs) and any(torch.equal(o, expected.flip(-1)) for o in outs)


def test_eval_transform_matches_torchvision() -> None:
    img = _image(300, 410)
    out = ClassificationTransform(train=False)(img)
    ref = TF.center_crop(TF.resize(img, [256], antialias=True), [224, 224]).float() / 255.0
    ref = (ref - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    portrait = ClassificationTransform(train=False, size=32, resize=40, mean=None, std=None)(_image(90, 50))
    assert portrait.shape == (3, 32, 32)


def test_ten_crop() -> None:
    img = _image(256, 300)  # even margins, so the central crop of the mirrored image is the mirrored central crop
    out = ClassificationTransform(train=False, ten_crop=True)(img)
    assert out.shape == (10, 3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out[5], out[0].flip(-1))
    assert all(torch.equal(out[5 + k], out[k].flip(-1)) for k in range(5))
    assert torch.equal(out[4], ClassificationTransform(train=False)(img))
    # the same ten crops as torchvision's ten_crop, whose last five come from the mirrored image in its own order
    ref = torch.stack(TF.ten_crop(TF.resize(img, [256], antialias=True), [224, 224])).float() / 255.0
    ref = (ref - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref[[0, 1, 2, 3, 4, 6, 5, 8, 7, 9]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ten_crop"):
        ClassificationTransform(train=True, ten_crop=True)


def test_dataset_with_transform(small_tree: Path) -> None:
    ds = Places365(small_tree, "val", num_classes=None, transform=ClassificationTransform(False, size=32, resize=36))
    x, y = ds[-1]
    assert x.shape == (3, 32, 32) and isinstance(y, int) and y == ds.targets[-1]


# --------------------------------------------------------------------------------------------------------- loading


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, i % 3


def _ids(loader) -> list[int]:
    return [int(i) for batch, _ in loader for i in batch]


def test_loader_two_ranks_disjoint() -> None:
    ds = _Indices(23)
    loaders = [build_classification_loader(ds, 4, train=True, num_workers=0, seed=1, rank=r, world_size=2)
               for r in range(2)]  # fmt: skip
    assert all(isinstance(ld.sampler, ResumableDistributedSampler) for ld in loaders)
    parts = [_ids(ld) for ld in loaders]
    assert len(parts[0]) == len(parts[1]) == 8  # 11 per rank, 2 full batches of 4 (incomplete batch dropped)
    assert not set(parts[0]) & set(parts[1])
    assert [len(ld) for ld in loaders] == [2, 2]
    again = _ids(build_classification_loader(ds, 4, train=True, num_workers=0, seed=1, rank=0, world_size=2))
    assert again == parts[0]  # deterministic
    loaders[0].sampler.set_epoch(1)
    assert _ids(loaders[0]) != parts[0]  # reshuffled per epoch

    evals = [build_classification_loader(ds, 5, train=False, num_workers=0, seed=1, rank=r, world_size=2)
             for r in range(2)]  # fmt: skip
    ev = [_ids(ld) for ld in evals]
    assert ev[0] == list(range(0, 23, 2)) and ev[1] == [*range(1, 23, 2), 0]  # DistributedSampler pads with index 0
    assert set(ev[0]) | set(ev[1]) == set(range(23))


def test_infinite_batches_resume() -> None:
    ds = _Indices(20)
    loader = build_classification_loader(ds, 3, train=True, num_workers=0, seed=4, rank=1, world_size=2)
    assert len(loader) == 3
    stream = resumable_batches(loader)
    full = [next(stream)[0].tolist() for _ in range(10)]
    epochs = [sorted(sum(full[e * 3 : e * 3 + 3], [])) for e in range(3)]
    assert epochs[0] != [] and full[:3] != full[3:6]
    for start in (0, 2, 3, 7):
        resumed = resumable_batches(
            build_classification_loader(ds, 3, train=True, num_workers=0, seed=4, rank=1, world_size=2), start
        )
        assert [next(resumed)[0].tolist() for _ in range(10 - start)] == full[start:]
    with pytest.raises(ValueError, match="start_index"):
        loader.sampler.set_epoch(0, start_index=11)


def test_loader_workers_reproducible(small_tree: Path) -> None:
    ds = Places365(small_tree, "train-standard", num_classes=None, transform=ClassificationTransform(True, size=24))

    def first_batch() -> tuple[torch.Tensor, torch.Tensor]:
        loader = build_classification_loader(ds, 4, train=True, num_workers=2, seed=7)
        return next(iter(loader))

    (x1, y1), (x2, y2) = first_batch(), first_batch()
    assert x1.shape == (4, 3, 24, 24) and torch.equal(y1, y2) and torch.equal(x1, x2)


# --------------------------------------------------------------------------------------------------------- benchmark


def test_benchmark_input_pipeline(small_tree: Path) -> None:
    ds = Places365(small_tree, "train-standard", num_classes=None, transform=ClassificationTransform(True, size=32))
    r = benchmark_input_pipeline(ds, batch_size=4, num_workers=0, num_batches=2)
    assert r["images_per_sec"] > 0 and r["seconds"] > 0 and r["images"] == 8 and r["batches"] == 2


def test_benchmark_model_step() -> None:
    r = benchmark_model_step("resnet20", batch_size=2, device=torch.device("cpu"), steps=1, warmup=0, size=32)
    assert r["images_per_sec"] > 0 and r["ms_per_step"] > 0


def test_benchmark_cli(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--fake-images", "8", "--batch-size", "4", "--batches", "1", "--workers", "0", "--model", "none", "--json"]
    assert benchmark_places_main(argv) == 0
    out = capsys.readouterr().out
    assert "input, 0 workers" in out and '"pipeline"' in out
