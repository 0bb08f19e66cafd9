"""Parity of ``eval_coco`` with detectron2's own ``COCOEvaluator`` on the real coco_tiny val2017 ground truth.

One deterministic set of synthetic detections (jittered copies of most ground-truth boxes, crowd boxes included, some
with a wrong class, some dropped, plus random false positives) goes through ``detectron2.evaluation.COCOEvaluator``
(``reset``/``process``/``evaluate``, contiguous class ids, XYXY ``Boxes``) and through ``tools/eval_coco.py``
(``eval_coco_main``) twice: on the results JSON that COCOEvaluator wrote, and on a COCO results JSON (XYWH, dataset
category ids) written here straight from the numpy arrays. AP, AP50, AP75, APs, APm and APl must be equal.

Box coordinates lie on a quarter-pixel grid and scores are float32 values, so detectron2's float32 tensors and the
float64 JSON written here hold exactly the same numbers; any difference is then a real disagreement (box format,
category mapping, crowd or area handling), not rounding. With detectron2's official pycocotools path
(``use_fast_impl=False``) the numbers are bit-for-bit equal; its default C++ ``COCOeval_opt`` (``use_fast_impl=True``)
accumulates in another order and can differ in the last bits (a few 1e-15 percent), so there the check is to 1e-6.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from se_transfer.cli import eval_coco_main

D2_MISSING = (
    "detectron2 is not installed: pip install ../shared/third_party/detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    " (see README)"
)
COCO_TINY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_tiny"
GT_JSON = COCO_TINY / "annotations" / "instances_val2017.json"
IMAGE_ROOT = COCO_TINY / "val2017"
DATASET_NAME = "se_transfer_test_d2_parity_coco_tiny_val2017"
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MAX_DETS_PER_IMAGE = 100  # COCOEvaluator's default max_dets_per_image ([1, 10, 100]), as in detectron2's models
SEED = 0


def _quarter(v: np.ndarray) -> np.ndarray:
    """Round to a multiple of 0.25: exact in float32 and float64, and so are sums and differences of such values."""
    return np.round(np.asarray(v, dtype=np.float64) * 4.0) / 4.0


def _synthetic_detections(gt: dict, seed: int = SEED) -> dict[int, dict[str, np.ndarray]]:
    """Per image id: 'xyxy' (N, 4) float64 absolute boxes, 'scores' (N,) float32, 'category_ids' (N,) dataset ids."""
    rng = np.random.default_rng(seed)
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)
    anns_by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)
    out = {}
    for img in sorted(gt["images"], key=lambda i: i["id"]):
        width, height = float(img["width"]), float(img["height"])
        boxes, cats = [], []
        for ann in anns_by_image[img["id"]]:
            if rng.random() < 0.15:  # a missed object
                continue
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0.0, 0.08, size=4)
            x1, y1 = x + dx * w, y + dy * h
            boxes.append([x1, y1, x1 + w * math.exp(dw), y1 + h * math.exp(dh)])
            cat = ann["category_id"]
            if rng.random() < 0.1:  # a wrong class
                cat = int(rng.choice(cat_ids[cat_ids != cat]))
            cats.append(cat)
        for _ in range(int(rng.integers(0, 8))):  # false positives of every size
            w, h = width * rng.uniform(0.02, 0.6), height * rng.uniform(0.02, 0.6)
            x1, y1 = rng.uniform(0.0, width - w), rng.uniform(0.0, height - h)
            boxes.append([x1, y1, x1 + w, y1 + h])
            cats.append(int(rng.choice(cat_ids)))
        xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0.0, width)
        xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0.0, height)
        xyxy = _quarter(xyxy)
        xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 0.25)  # no empty box
        assert len(xyxy) <= MAX_DETS_PER_IMAGE
        out[img["id"]] = {
            "xyxy": xyxy,
            "scores": rng.random(len(xyxy)).astype(np.float32),
            "category_ids": np.asarray(cats, dtype=np.int64),
        }
    return out


def _own_results_json(dets: dict[int, dict[str, np.ndarray]], path: Path) -> Path:
    """A COCO box results JSON (XYWH, dataset category ids) written straight from the numpy arrays."""
    results = []
    for image_id, d in dets.items():
        xywh = np.concatenate([d["xyxy"][:, :2], d["xyxy"][:, 2:] - d["xyxy"][:, :2]], axis=1)
        for box, score, cat in zip(xywh, d["scores"], d["category_ids"]):
            results.append(
                {"image_id": image_id, "category_id": int(cat), "bbox": [float(v) for v in box], "score": float(score)}
            )
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def _eval_coco(dets_json: Path, capsys) -> dict[str, float]:
    capsys.readouterr()  # drop what detectron2 printed
    assert eval_coco_main(["--gt", str(GT_JSON), "--dets", str(dets_json), "--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def d2_dataset():
    """The coco_tiny val2017 json registered as a detectron2 dataset: (name, metadata, gt dict, detections)."""
    pytest.importorskip("detectron2", reason=D2_MISSING)
    if not GT_JSON.is_file():
        pytest.skip(f"COCO ground truth not found: {GT_JSON} (the shared coco_tiny data set is absent)")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    registered_here = DATASET_NAME not in DatasetCatalog.list()
    if registered_here:
        register_coco_instances(DATASET_NAME, {}, str(GT_JSON), str(IMAGE_ROOT))
    DatasetCatalog.get(DATASET_NAME)  # loading the json sets thing_dataset_id_to_contiguous_id on the metadata
    metadata = MetadataCatalog.get(DATASET_NAME)
    gt = json.loads(GT_JSON.read_text(encoding="utf-8"))
    yield DATASET_NAME, metadata, gt, _synthetic_detections(gt)
    if registered_here:
        DatasetCatalog.remove(DATASET_NAME)
        MetadataCatalog.remove(DATASET_NAME)


def test_the_fixture_is_the_real_coco_tiny_ground_truth(d2_dataset):
    _, metadata, gt, dets = d2_dataset
    cat_ids = sorted(c["id"] for c in gt["categories"])
    assert (len(gt["images"]), len(gt["annotations"])) == (80, 815)
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert cat_ids != list(range(1, len(cat_ids) + 1))  # non-contiguous: the id mapping matters
    assert metadata.thing_dataset_id_to_contiguous_id == {c: i for i, c in enumerate(cat_ids)}
    assert sorted(dets) == sorted(img["id"] for img in gt["images"])
    assert max(len(d["xyxy"]) for d in dets.values()) <= MAX_DETS_PER_IMAGE


@pytest.mark.parametrize("use_fast_impl", [True, False], ids=["d2_fast_impl", "d2_official_cocoeval"])
def test_eval_coco_equals_detectron2_coco_evaluator(d2_dataset, use_fast_impl, tmp_path, capsys):
    import torch
    from detectron2.evaluation import COCOEvaluator, coco_evaluation
    from detectron2.structures import Boxes, Instances

    if use_fast_impl and coco_evaluation.COCOeval_opt is coco_evaluation.COCOeval:
        pytest.skip("this detectron2 has no C++ extension, so no fast COCOeval_opt to compare")
    name, metadata, gt, dets = d2_dataset
    to_contiguous = metadata.thing_dataset_id_to_contiguous_id
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}

    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "d2"), use_fast_impl=use_fast_impl)
    evaluator.reset()
    image_ids = sorted(dets)
    for start in range(0, len(image_ids), 4):  # batches of 4 images, as a data loader would give them
        inputs, outputs = [], []
        for image_id in image_ids[start : start + 4]:
            d = dets[image_id]
            instances = Instances(sizes[image_id])
            instances.pred_boxes = Boxes(torch.as_tensor(d["xyxy"], dtype=torch.float32))
            instances.scores = torch.from_numpy(d["scores"])
            classes = [to_contiguous[int(c)] for c in d["category_ids"]]
            instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
            inputs.append({"image_id": image_id, "height": sizes[image_id][0], "width": sizes[image_id][1]})
            outputs.append({"instances": instances})
        evaluator.process(inputs, outputs)
    d2 = evaluator.evaluate()["bbox"]

    for k in STATS:  # a meaningful comparison: neither all-right nor all-wrong, every area range populated
        assert 1.0 < d2[k] < 99.0, (k, d2[k])
    assert d2["AP50"] > d2["AP75"]

    # official pycocotools in both: bit-for-bit; detectron2's C++ COCOeval_opt: equal up to rounding of its sums
    expected = pytest.approx({k: d2[k] for k in STATS}, rel=0.0, abs=1e-6 if use_fast_impl else 0.0)

    d2_json = tmp_path / "d2" / "coco_instances_results.json"
    ours_on_d2_json = _eval_coco(d2_json, capsys)
    assert {k: ours_on_d2_json[k] for k in STATS} == expected

    own_json = _own_results_json(dets, tmp_path / "own_results.json")
    ours_on_own_json = _eval_coco(own_json, capsys)
    assert {k: ours_on_own_json[k] for k in STATS} == expected

    # the two files hold the same detections: XYXY -> XYWH and contiguous -> dataset ids agree, not just the stats
    def records(path):
        rows = json.loads(path.read_text(encoding="utf-8"))
        return sorted((r["image_id"], r["category_id"], *r["bbox"], r["score"]) for r in rows)

    assert records(d2_json) == records(own_json)
