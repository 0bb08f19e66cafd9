"""COCO detection data: registered names, CocoDetection, the box-aware transform, batching and the demo writer."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from se_transfer.data import (
    AspectRatioGroupedBatchSampler,
    CocoDetection,
    DatasetError,
    DetectionTransform,
    InferenceBatchSampler,
    build_detection_loader,
    collate_detection,
    read_rgb_image,
    resize_shortest_edge_size,
    resolve_coco_dataset,
    resolve_coco_datasets,
    resumable_batches,
    write_demo_coco,
)

COCO_TINY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_tiny"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_coco(tmp_path_factory.mktemp("coco_demo"), num_train=16, num_val=6, seed=0)


def _write_json(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float], iscrowd: int = 0) -> dict:
    x, y, w, h = bbox
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": w * h,
            "iscrowd": iscrowd, "segmentation": [poly]}  # fmt: skip


def _save(path: Path, mode: str, size: tuple[int, int], fmt: str = "JPEG") -> None:
    """Save a (width, height) image of ``mode`` with some structure in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = (np.add.outer(np.arange(h), np.arange(w)) * 3 % 256).astype(np.uint8)
    rgb = Image.fromarray(np.stack([arr, arr, 255 - arr], axis=2), "RGB")
    img = {"L": rgb.convert("L"), "CMYK": rgb.convert("CMYK"), "RGB": rgb, "RGBA": rgb.convert("RGBA")}.get(mode)
    if mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(path, format=fmt)


# ------------------------------------------------------------------------------------------------ registered names


def _fake_layout(root: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text("{}")


def test_resolve_registered_names(tmp_path: Path):
    _fake_layout(tmp_path, ("train2017", "val2017", "train"))
    assert resolve_coco_dataset(tmp_path, "coco_2017_val") == (
        tmp_path / "val2017",
        tmp_path / "annotations" / "instances_val2017.json",
    )
    assert resolve_coco_dataset(tmp_path, "coco_2014_minival") == resolve_coco_dataset(tmp_path, "coco_2017_val")
    assert resolve_coco_dataset(tmp_path, "coco_demo_train") == (
        tmp_path / "train",
        tmp_path / "annotations" / "instances_train.json",
    )
    with pytest.raises(DatasetError, match=r"instances_val\.json.*ROOT/annotations/instances_\{split\}\.json"):
        resolve_coco_dataset(tmp_path, "coco_demo_val")
    with pytest.raises(ValueError, match="unknown detection data set"):
        resolve_coco_dataset(tmp_path, "coco_2099_train")
    (tmp_path / "train2017").rmdir()
    with pytest.raises(DatasetError, match="train2017"):
        resolve_coco_dataset(tmp_path, "coco_2017_train")


def test_minival_pair_resolves_to_train2017(tmp_path: Path):
    _fake_layout(tmp_path, ("train2017", "val2017"))
    train2017 = (tmp_path / "train2017", tmp_path / "annotations" / "instances_train2017.json")
    for pair in (("coco_2014_train", "coco_2014_valminusminival"), ("coco_2014_valminusminival", "coco_2014_train")):
        assert resolve_coco_datasets(tmp_path, pair) == [train2017]
    assert resolve_coco_datasets(tmp_path, ["coco_2014_minival"]) == [
        (tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")
    ]
    for alone in ("coco_2014_train", "coco_2014_valminusminival"):
        with pytest.raises(ValueError, match="pair"):
            resolve_coco_datasets(tmp_path, [alone])
        with pytest.raises(ValueError, match="pair"):
            resolve_coco_dataset(tmp_path, alone)
    with pytest.raises(ValueError, match="more than once"):
        resolve_coco_datasets(tmp_path, ["coco_2014_train", "coco_2014_valminusminival", "coco_2017_train"])


# ------------------------------------------------------------------------------------------------ CocoDetection


def test_demo_round_trip(demo_root: Path):
    train = CocoDetection(*resolve_coco_dataset(demo_root, "coco_demo_train"))
    assert train.coco_to_contiguous == {1: 1, 3: 2, 7: 3}
    assert train.contiguous_to_coco == {1: 1, 2: 3, 3: 7}
    assert train.class_names == ["__background__", "rectangle", "disc", "triangle"] and train.num_classes == 3
    assert len(train) == 15 and train.stats["images_without_annotations"] == 1
    assert train.stats["crowd_boxes"] == 0 and train.stats["degenerate_boxes"] == 0
    all_train = CocoDetection(*resolve_coco_dataset(demo_root, "coco_demo_train"), filter_empty=False)
    assert len(all_train) == 16 and all_train.stats["images_without_annotations"] == 1
    assert {train.get_height_width(i) for i in range(len(train))} == {(160, 192), (192, 160)}

    image, target = train[0]
    info = train.coco.imgs[train.ids[0]]
    assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    anns = train.coco.imgToAnns[train.ids[0]]
    want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns])  # fmt: skip
    assert torch.allclose(target["boxes"], want) and target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [train.coco_to_contiguous[a["category_id"]] for a in anns]
    assert target["labels"].dtype == torch.int64 and target["image_id"] == train.ids[0]
    assert target["orig_size"] == (info["height"], info["width"])
    # The pixels under a box are the shape's solid colour.
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    centre = image[:, (y1 + y2) // 2, (x1 + x2) // 2]
    assert float(centre.max() - centre.min()) > 0.4

    val = CocoDetection(*resolve_coco_dataset(demo_root, "coco_demo_val"))
    assert len(val) == 6 and val.stats["crowd_boxes"] == 1
    crowd = [a for a in val.coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"], dict)
    rle = crowd[0]["segmentation"]
    assert sum(rle["counts"]) == rle["size"][0] * rle["size"][1] and sum(rle["counts"][1::2]) == crowd[0]["area"]
    img_idx = val.ids.index(crowd[0]["image_id"])
    n_non_crowd = len(val.coco.imgToAnns[crowd[0]["image_id"]]) - 1
    assert len(val.annotations(img_idx)[1]) == n_non_crowd


def test_degenerate_boxes_clipping_and_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    _save(tmp_path / "img" / "a.jpg", "RGB", (50, 40))
    _save(tmp_path / "img" / "b.jpg", "RGB", (50, 40))
    anns = [
        _ann(1, 1, 5, [10, 5, 20, 10]),
        _ann(2, 1, 9, [40, 30, 30, 30]),  # clipped to 40..50 x 30..40
        _ann(3, 1, 5, [3, 3, 0.5, 10]),  # too thin
        _ann(4, 1, 5, [60, 10, 10, 10]),  # outside the image: nothing left after clipping
        _ann(5, 1, 9, [0, 0, 50, 40], iscrowd=1),
        _ann(6, 2, 5, [5, 5, 1, 1]),  # the only box of image 2: degenerate, so image 2 is empty
    ]
    cats = [{"id": 9, "name": "nine", "supercategory": "x"}, {"id": 5, "name": "five", "supercategory": "x"}]
    ann_file = _write_json(tmp_path / "ann.json", [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 50},
                           {"id": 2, "file_name": "b.jpg", "height": 40, "width": 50}], anns, cats)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="se_transfer.data.coco"):
        ds = CocoDetection(tmp_path / "img", ann_file)
    assert ds.stats == {"degenerate_boxes": 3, "crowd_boxes": 1, "images_without_annotations": 1, "missing_images": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 degenerate" in warnings[0].getMessage()
    assert ds.ids == [1] and ds.class_names == ["__background__", "five", "nine"]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[10, 5, 30, 15], [40, 30, 50, 40]]
    assert target["labels"].tolist() == [1, 2]


@pytest.mark.parametrize(("mode", "fmt"), [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG")])
def test_image_modes_become_rgb(tmp_path: Path, mode: str, fmt: str):
    path = tmp_path / f"im.{fmt.lower()}"
    _save(path, mode, (30, 20), fmt)
    assert Image.open(path).mode == mode
    arr = read_rgb_image(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8 and arr.std() > 10
    if mode == "L":
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    cats = [{"id": 1, "name": "a", "supercategory": "x"}]
    ann_file = _write_json(tmp_path / "a.json", [{"id": 7, "file_name": path.name, "height": 20, "width": 30}],
                           [_ann(1, 7, 1, [2, 2, 10, 10])], cats)  # fmt: skip
    image, _ = CocoDetection(tmp_path, ann_file)[0]
    assert image.shape == (3, 20, 30)


def test_a_bbox_that_is_not_four_numbers_is_named(tmp_path: Path):
    _save(tmp_path / "img" / "ok.jpg", "RGB", (40, 30))
    images = [{"id": 5, "file_name": "ok.jpg", "height": 30, "width": 40}]
    cats = [{"id": 1, "name": "a", "supercategory": "x"}]
    for bad in (["1", 2, 3, 4], [1, 2, 3], None):
        ann_file = _write_json(tmp_path / "a.json", images, [{**_ann(9, 5, 1, [1, 2, 3, 4]), "bbox": bad}], cats)
        with pytest.raises(DatasetError, match=r"a\.json: annotation 9 \(image 5\) has bbox .*4 numbers"):
            CocoDetection(tmp_path / "img", ann_file)


def test_missing_and_unreadable_images(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    _save(tmp_path / "img" / "ok.jpg", "RGB", (40, 30))
    (tmp_path / "img" / "broken.jpg").write_bytes(b"not a jpeg at all")
    images = [{"id": i + 1, "file_name": f, "height": 30, "width": 40} for i, f in
              enumerate(["ok.jpg", "gone.jpg", "broken.jpg"])]  # fmt: skip
    anns = [_ann(i + 1, i + 1, 1, [1, 1, 20, 20]) for i in range(3)]
    ann_file = _write_json(tmp_path / "a.json", images, anns, [{"id": 1, "name": "a", "supercategory": "x"}])
    # a missing file is found at start, not when a worker first reads it
    with pytest.raises(
        DatasetError, match=r"a\.json: 1 of 3 image files are missing: .*gone\.jpg .*SKIP_MISSING_IMAGES"
    ):
        CocoDetection(tmp_path / "img", ann_file)
    (tmp_path / "img" / "gone.jpg").write_bytes((tmp_path / "img" / "ok.jpg").read_bytes())
    ds = CocoDetection(tmp_path / "img", ann_file)
    assert len(ds) == 3 and ds.stats["missing_images"] == 0
    (tmp_path / "img" / "gone.jpg").unlink()  # gone after the start: reading it is still an error naming it
    with pytest.raises(DatasetError, match="gone.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds[2]
    with caplog.at_level(logging.WARNING, logger="se_transfer.data.coco"):
        ds = CocoDetection(tmp_path / "img", ann_file, skip_missing=True)
    assert ds.ids == [1, 3] and ds.stats["missing_images"] == 1
    assert any("gone.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with pytest.raises(DatasetError, match="instances_"):
        CocoDetection(tmp_path / "img", tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------------ DetectionTransform


def test_resize_rule_matches_torchvision():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    for (h, w), min_size, max_size in [((480, 640), 600, 1000), ((100, 400), 600, 1000), ((333, 250), 128, 200)]:
        new_h, new_w = resize_shortest_edge_size(h, w, min_size, max_size)
        assert max(new_h, new_w) <= max_size and (min(new_h, new_w) == min_size or max(new_h, new_w) == max_size)
        tv = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
        out, _ = tv([torch.rand(3, new_h, new_w)])
        assert out.image_sizes == [(new_h, new_w)]  # torchvision does not resize again


def test_detection_transform_resize_flip_and_empty():
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 50, 60], [0, 0, 120, 90]], dtype=np.float32)
    labels = np.array([2, 5])
    test_tf = DetectionTransform((60, 75), max_size=1000, flip_prob=0.5, train=False)
    out, out_boxes, out_labels = test_tf(image, boxes, labels)
    assert out.shape == (75, 100, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out_boxes, boxes * (75 / 90), atol=1e-3)
    assert out_labels.tolist() == [2, 5] and out_labels.dtype == np.int64

    capped = DetectionTransform((90,), max_size=96, flip_prob=0.0, train=True)
    out, out_boxes, _ = capped(image, boxes, labels)
    assert out.shape == (72, 96, 3)
    np.testing.assert_allclose(out_boxes, boxes * 0.8, atol=1e-3)

    flip = DetectionTransform((45,), max_size=1000, flip_prob=1.0, train=True)
    out, out_boxes, _ = flip(image, boxes, labels)
    assert out.shape == (45, 60, 3)
    scaled = boxes * 0.5
    np.testing.assert_allclose(out_boxes[:, [0, 2]], 60 - scaled[:, [2, 0]], atol=1e-3)
    np.testing.assert_allclose(out_boxes[:, [1, 3]], scaled[:, [1, 3]], atol=1e-3)
    unflipped, _, _ = DetectionTransform((45,), max_size=1000, flip_prob=0.0, train=True)(image, boxes, labels)
    np.testing.assert_array_equal(out, unflipped[:, ::-1])

    out, out_boxes, out_labels = flip(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert out.shape == (45, 60, 3) and out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def test_detection_transform_multiscale_is_seeded():
    image = np.zeros((100, 150, 3), np.uint8)
    boxes = np.array([[10, 10, 40, 90]], np.float32)
    tf = DetectionTransform((32, 48, 64, 80), max_size=1000, flip_prob=0.5, train=True)

    def run() -> list[tuple[int, float]]:
        random.seed(123)
        return [(o.shape[0], float(b[0, 0])) for o, b, _ in (tf(image, boxes, np.array([1])) for _ in range(20))]

    first = run()
    assert first == run()
    assert {s for s, _ in first} == {32, 48, 64, 80}
    flips = {round(x / (s / 100)) for s, x in first}
    assert flips == {10, 150 - 40}  # x1 = 10 unflipped, W - x2 = 110 flipped (in original pixels)


# ------------------------------------------------------------------------------------------------ batching


def test_aspect_ratio_grouped_sampler():
    rng = np.random.default_rng(0)
    ratios = np.where(rng.random(103) < 0.3, 0.75, 1.33).tolist()
    ratios[5] = 1.0  # square goes with landscape

    def epoch(rank: int, world: int, e: int = 0, seed: int = 3) -> list[list[int]]:
        s = AspectRatioGroupedBatchSampler(ratios, 4, shuffle=True, seed=seed, rank=rank, world_size=world)
        s.set_epoch(e)
        batches = list(s)
        assert len(batches) == len(s)
        return batches

    for batch in epoch(0, 1):
        assert len(batch) == 4 and len({ratios[i] < 1.0 for i in batch}) == 1
    r0, r1 = epoch(0, 2), epoch(1, 2)
    assert len(r0) == len(r1) == 12
    seen0, seen1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not seen0 & seen1
    n_portrait = sum(r < 1.0 for r in ratios)
    full = (n_portrait // 4 + (103 - n_portrait) // 4) // 2 * 2 * 4
    assert len(seen0 | seen1) == full and 103 - full < 4 * 2 + 4 * 2
    assert epoch(0, 2) == r0 and epoch(0, 2, e=1) != r0 and epoch(0, 2, seed=4) != r0
    assert sorted(i for b in epoch(0, 1, e=1) for i in b) != [i for b in epoch(0, 1, e=1) for i in b]

    s = AspectRatioGroupedBatchSampler(ratios, 4, shuffle=True, seed=3, rank=1, world_size=2)
    s.set_epoch(0, start_batch=5)
    assert list(s) == r1[5:] and list(s) == r1  # the skip applies to one pass only

    keep = AspectRatioGroupedBatchSampler(ratios, 4, shuffle=False, seed=0, rank=0, world_size=1, drop_last=False)
    assert sorted(i for b in keep for i in b) == list(range(103))
    with pytest.raises(ValueError, match="no batch"):
        AspectRatioGroupedBatchSampler([1.0] * 3, 4, shuffle=True, seed=0)


def test_inference_sampler_and_eval_loader_cover_every_image_once(demo_root: Path):
    assert [list(InferenceBatchSampler(7, 2, rank=r, world_size=3)) for r in range(3)] == [
        [[0, 3], [6]],
        [[1, 4]],
        [[2, 5]],
    ]
    val = CocoDetection(*resolve_coco_dataset(demo_root, "coco_demo_val"), transforms=DetectionTransform((64,), 100,
                        0.5, train=False))  # fmt: skip
    seen = []
    for rank in range(2):
        loader = build_detection_loader(val, 4, train=False, num_workers=0, seed=0, rank=rank, world_size=2)
        for images, targets in loader:
            assert isinstance(images, list) and all(min(im.shape[1:]) == 64 for im in images)
            seen += [t["image_id"] for t in targets]
    assert sorted(seen) == sorted(val.ids)


def test_train_loader_groups_and_is_reproducible(demo_root: Path):
    train = CocoDetection(*resolve_coco_dataset(demo_root, "coco_demo_train"),
                          transforms=DetectionTransform((48, 64), 100, 0.5, train=True))  # fmt: skip

    def first_batches(num_workers: int) -> list[tuple[list[int], list[list[float]]]]:
        loader = build_detection_loader(train, 2, train=True, num_workers=num_workers, seed=1, rank=0, world_size=1)
        assert len(loader) == 7  # 15 images: 12 landscape -> 6 batches, 3 portrait -> 1 batch
        out = []
        for step, (images, targets) in enumerate(resumable_batches(loader)):
            assert len({im.shape[1] <= im.shape[2] for im in images}) == 1  # one orientation per batch
            out.append(([t["image_id"] for t in targets], [t["boxes"].sum().item() for t in targets]))
            if step == 8:  # runs into the second epoch
                return out
        raise AssertionError("unreachable")

    a = first_batches(2)
    assert a == first_batches(2)
    epoch0 = [i for ids, _ in a[:7] for i in ids]
    assert len(set(epoch0)) == 14 and a[7:9] != a[:2]  # one image left over; epoch 1 in another order
    plain = collate_detection([(torch.zeros(3, 2, 2), {"x": 1}), (torch.ones(3, 4, 4), {"x": 2})])
    assert [im.shape[1] for im in plain[0]] == [2, 4] and [t["x"] for t in plain[1]] == [1, 2]


# ------------------------------------------------------------------------------------------------ real COCO images


@pytest.fixture(scope="module")
def coco_tiny_val() -> CocoDetection:
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"{COCO_TINY} not present")
    return CocoDetection(*resolve_coco_dataset(COCO_TINY, "coco_2017_val"), filter_empty=False)


def test_coco_tiny_categories_and_crowd(coco_tiny_val: CocoDetection):
    ds = coco_tiny_val
    assert len(ds) == 80 and ds.num_classes == 80 and len(ds.class_names) == 81
    assert sorted(ds.contiguous_to_coco) == list(range(1, 81))
    assert ds.contiguous_to_coco[80] == 90 and ds.coco_to_contiguous[90] == 80
    assert ds.coco_to_contiguous[13] == 12  # COCO has no id 12: the first gap
    assert ds.class_names[1] == "person" and ds.class_names[80] == "toothbrush"
    assert ds.stats["crowd_boxes"] > 0
    assert resolve_coco_datasets(COCO_TINY, ["coco_2014_minival"]) == [(ds.image_dir, ds.ann_file)]


def test_coco_tiny_reads_a_real_image(coco_tiny_val: CocoDetection):
    i = 3
    image, target = coco_tiny_val[i]
    h, w = coco_tiny_val.get_height_width(i)
    assert image.shape == (3, h, w) and target["orig_size"] == (h, w)
    assert 0.02 < float(image.std()) and float(image.max()) <= 1.0
    boxes = target["boxes"]
    assert len(boxes) == len(target["labels"]) > 0
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    assert float(boxes[:, 2].max()) <= w and float(boxes[:, 3].max()) <= h
    tf = DetectionTransform((200,), 300, 0.5, train=False)
    ds = CocoDetection(coco_tiny_val.image_dir, coco_tiny_val.ann_file, transforms=tf, filter_empty=False)
    small, t2 = ds[i]
    assert min(small.shape[1:]) == 200 or max(small.shape[1:]) == 300
    np.testing.assert_allclose(t2["boxes"][:, 2].numpy(), boxes[:, 2].numpy() * small.shape[2] / w, atol=0.05)
