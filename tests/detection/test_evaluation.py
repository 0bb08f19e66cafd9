"""COCO evaluation: parity with the official pycocotools reference, the evaluator, edge cases and the pictures."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from se_transfer.cli import eval_coco_main, visualize_main
from se_transfer.detection import evaluation
from se_transfer.detection.evaluation import (
    COCO_STAT_NAMES,
    COCOEvaluator,
    evaluate_coco_json,
    format_results_table,
    load_coco_gt,
)
from se_transfer.detection.visualize import draw_detections

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "data" / "pycocotools_reference"
GT_100 = REFERENCE / "instances_val2014_100.json"
FAKE_BBOX = REFERENCE / "instances_val2014_fakebbox100_results.json"
OFFICIAL_PRINTOUT = REFERENCE / "val2014_fake_eval_res.txt"

needs_reference = pytest.mark.skipif(
    not all(p.is_file() for p in (GT_100, FAKE_BBOX, OFFICIAL_PRINTOUT)),
    reason=f"pycocotools reference data not found in {REFERENCE}",
)

# COCO category ids 2 and 5 (non-contiguous) are the model's labels 1 and 2.
CONTIGUOUS_TO_COCO = {1: 2, 2: 5}
IMAGE_SIZES = {1: (200, 150), 2: (160, 120), 3: (120, 100)}  # id -> (width, height)
GT_BOXES = {  # image id -> [(category id, xywh, iscrowd)]; small, medium and large boxes
    1: [(2, [10, 10, 20, 15], 0), (5, [50, 30, 120, 100], 0), (2, [130, 5, 60, 40], 1)],
    2: [(5, [5, 5, 40, 50], 0), (5, [80, 60, 25, 20], 0)],
    3: [(2, [20, 20, 70, 60], 0)],
}


def _synthetic_gt() -> dict:
    images = [{"id": i, "width": w, "height": h, "file_name": f"img_{i:03d}.png"} for i, (w, h) in IMAGE_SIZES.items()]
    annotations = []
    for image_id, boxes in GT_BOXES.items():
        for cat, (x, y, w, h), crowd in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    categories = [
        {"id": 2, "name": "bicycle", "supercategory": "x"},
        {"id": 5, "name": "airplane", "supercategory": "x"},
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_synthetic_gt()))
    return path


def _perfect_outputs(image_ids, shift: float = 0.0, wrong_class_image: int | None = None):
    """torchvision-style outputs equal to the ground truth (xyxy, score 1, contiguous labels)."""
    coco_to_contiguous = {v: k for k, v in CONTIGUOUS_TO_COCO.items()}
    targets, outputs = [], []
    for image_id in image_ids:
        boxes = [[x + shift, y, x + w + shift, y + h] for _, (x, y, w, h), _ in GT_BOXES[image_id]]
        labels = [coco_to_contiguous[c] for c, _, _ in GT_BOXES[image_id]]
        if image_id == wrong_class_image:
            labels = [3 - lab for lab in labels]
        targets.append({"image_id": torch.tensor(image_id), "boxes": torch.zeros(0, 4)})
        outputs.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.ones(len(boxes)),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return targets, outputs


def _last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@needs_reference
def test_eval_coco_script_matches_pycocotools_reference():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_coco.py"), "--gt", str(GT_100), "--dets", str(FAKE_BBOX), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stats = _last_json_line(proc.stdout)
    assert set(stats) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # pycocotools 2.0.7-2.0.11 on this reference (the official printout agrees at its 3 decimals, see below)
    expected = {"AP": 50.46, "AP50": 69.70, "AP75": 57.30, "APs": 58.56, "APm": 51.94, "APl": 50.14}
    assert {k: round(v, 2) for k, v in stats.items()} == expected
    assert stats["AP"] == pytest.approx(50.45806987, abs=1e-6)
    assert "Average Precision" in proc.stdout  # pycocotools' own summary is printed too


def _official_bbox_stats() -> list[float]:
    """The 12 numbers of the 'type=bbox' section of pycocotools' official printout."""
    text = OFFICIAL_PRINTOUT.read_text()
    section = text.split("type=bbox", 1)[1].split("type=", 1)[0]
    values = re.findall(r"Average (?:Precision|Recall)\s+\((?:AP|AR)\) @\[.*?\]\s*=\s*(-?[0-9.]+)", section)
    assert len(values) == 12, section
    return [float(v) for v in values]


@needs_reference
def test_all_twelve_stats_match_official_printout():
    stats = evaluate_coco_json(GT_100, FAKE_BBOX)
    assert list(stats) == list(COCO_STAT_NAMES)
    official = _official_bbox_stats()
    assert [round(stats[k] / 100, 3) for k in COCO_STAT_NAMES] == pytest.approx(official, abs=1e-9)


def test_evaluator_perfect_predictions(gt_file: Path, tmp_path: Path):
    coco_gt = load_coco_gt(gt_file)
    ev = COCOEvaluator(coco_gt, CONTIGUOUS_TO_COCO, tmp_path / "out")
    targets, outputs = _perfect_outputs([1, 2, 3])
    ev.process(targets[:2], outputs[:2])
    ev.process([3], outputs[2:])  # plain image ids work too
    stats = ev.evaluate()
    assert list(stats) == list(COCO_STAT_NAMES)
    assert stats["AP"] == pytest.approx(100.0)
    assert stats["AP50"] == pytest.approx(100.0)
    for k in ("APs", "APm", "APl"):
        assert stats[k] == pytest.approx(100.0)

    written = tmp_path / "out" / "inference" / "coco_instances_results.json"
    assert written.is_file()
    assert not [p for p in written.parent.iterdir() if p != written]  # no temporary file left behind
    results = json.loads(written.read_text())
    assert len(results) == sum(len(b) for b in GT_BOXES.values())
    assert {r["category_id"] for r in results} == {2, 5}  # COCO ids, not the contiguous labels
    first = next(r for r in results if r["image_id"] == 1 and r["category_id"] == 5)
    assert first["bbox"] == pytest.approx([50, 30, 120, 100])  # xywh
    assert isinstance(first["score"], float)
    assert evaluate_coco_json(coco_gt, written) == stats


def test_evaluator_partial_evaluation_uses_processed_images_only(gt_file: Path):
    ev = COCOEvaluator(load_coco_gt(gt_file), CONTIGUOUS_TO_COCO, None)
    targets, outputs = _perfect_outputs([1, 3])
    ev.process(targets, outputs)
    assert ev.evaluate()["AP"] == pytest.approx(100.0)  # image 2's ground truth is not counted as missed
    ev.reset()
    targets, outputs = _perfect_outputs([2])
    ev.process(targets, outputs)
    assert ev.evaluate()["AP50"] == pytest.approx(100.0)


def test_wrong_predictions_lower_ap(gt_file: Path):
    coco_gt = load_coco_gt(gt_file)
    ev = COCOEvaluator(coco_gt, CONTIGUOUS_TO_COCO, None)
    ev.process(*_perfect_outputs([1, 2, 3], shift=4.0))
    shifted = ev.evaluate()
    assert shifted["AP"] < 90.0
    ev.reset()
    ev.process(*_perfect_outputs([1, 2, 3], wrong_class_image=2))
    wrong = ev.evaluate()
    assert wrong["AP"] < 90.0
    assert wrong["AP50"] < 90.0


def test_evaluator_gathers_ranks_and_counts_duplicates_once(gt_file: Path, monkeypatch: pytest.MonkeyPatch):
    coco_gt = load_coco_gt(gt_file)
    other = COCOEvaluator(coco_gt, CONTIGUOUS_TO_COCO, None)
    other.process(*_perfect_outputs([2, 3]))
    ev = COCOEvaluator(coco_gt, CONTIGUOUS_TO_COCO, None)
    ev.process(*_perfect_outputs([1, 2], shift=30.0))  # image 2 also on "rank 1": rank 0's copy is kept
    monkeypatch.setattr(evaluation, "all_gather_object", lambda obj: [obj, other._predictions])
    stats = ev.evaluate()
    assert 0.0 < stats["AP"] < 100.0
    monkeypatch.setattr(evaluation, "is_main_process", lambda: False)
    assert ev.evaluate() == {}


def test_evaluator_rejects_unmapped_labels(gt_file: Path):
    ev = COCOEvaluator(load_coco_gt(gt_file), CONTIGUOUS_TO_COCO, None)
    outputs = [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([7])}]
    with pytest.raises(ValueError, match="label 7"):
        ev.process([1], outputs)


def test_empty_detections_give_zeros(gt_file: Path, tmp_path: Path):
    assert evaluate_coco_json(gt_file, []) == dict.fromkeys(COCO_STAT_NAMES, 0.0)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert evaluate_coco_json(gt_file, empty) == dict.fromkeys(COCO_STAT_NAMES, 0.0)
    ev = COCOEvaluator(load_coco_gt(gt_file), CONTIGUOUS_TO_COCO, tmp_path / "out")
    ev.process([1], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=int)}])
    assert ev.evaluate() == dict.fromkeys(COCO_STAT_NAMES, 0.0)
    assert json.loads((tmp_path / "out" / "inference" / "coco_instances_results.json").read_text()) == []


def test_bad_detections_are_named(gt_file: Path, tmp_path: Path):
    good = {"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}
    not_a_list = tmp_path / "dict.json"
    not_a_list.write_text(json.dumps({"annotations": [good]}))
    with pytest.raises(ValueError, match=re.escape(str(not_a_list))):
        evaluate_coco_json(gt_file, not_a_list)
    bad_entry = tmp_path / "bad_entry.json"
    bad_entry.write_text(json.dumps([good, {"image_id": 1, "category_id": 2, "bbox": [1, 2, 3], "score": 0.5}]))
    with pytest.raises(ValueError, match=re.escape(str(bad_entry)) + r".*entry 1.*bbox"):
        evaluate_coco_json(gt_file, bad_entry)
    not_json = tmp_path / "not_json.json"
    not_json.write_text("[{")
    with pytest.raises(ValueError, match=re.escape(str(not_json))):
        evaluate_coco_json(gt_file, not_json)
    with pytest.raises(ValueError, match="image_id=999"):
        evaluate_coco_json(gt_file, [good, dict(good, image_id=999)])


def test_eval_coco_main(gt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    dets = [
        {"image_id": i, "category_id": c, "bbox": b, "score": 1.0} for i, boxes in GT_BOXES.items() for c, b, _ in boxes
    ]
    dets_file = tmp_path / "dets.json"
    dets_file.write_text(json.dumps(dets))
    assert eval_coco_main(["--gt", str(gt_file), "--dets", str(dets_file), "--json"]) == 0
    out = capsys.readouterr().out
    assert _last_json_line(out) == pytest.approx(dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 100.0))
    assert "AP50" in out and "100.00" in out

    missing = tmp_path / "missing.json"
    assert eval_coco_main(["--gt", str(gt_file), "--dets", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert eval_coco_main(["--gt", str(missing), "--dets", str(dets_file)]) == 2
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert eval_coco_main(["--gt", str(gt_file), "--dets", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_format_results_table():
    stats = dict.fromkeys(COCO_STAT_NAMES, 12.345)
    stats["APs"] = float("nan")
    table = format_results_table(stats, paper={"AP": 37.7, "AP50": 59.1})
    lines = table.splitlines()
    assert lines[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert lines[2].split() == ["ours", "12.35", "12.35", "12.35", "-", "12.35", "12.35"]
    assert lines[3].split() == ["paper", "37.7", "59.1", "-", "-", "-", "-"]
    assert len(format_results_table(stats).splitlines()) == 3


def test_draw_detections_png(tmp_path: Path):
    image = np.full((120, 160, 3), 200, dtype=np.uint8)
    out = draw_detections(
        image,
        gt_boxes=[[10, 10, 60, 50]],
        gt_labels=["bicycle"],
        det_boxes=torch.tensor([[80.0, 40.0, 150.0, 110.0], [5.0, 5.0, 20.0, 20.0]]),
        det_scores=[0.9, 0.1],
        det_labels=["airplane", "bicycle"],
        out_path=tmp_path / "sub" / "det.png",
    )
    assert out == tmp_path / "sub" / "det.png"
    with Image.open(out) as im:
        assert im.size == (160, 120)
        pixels = np.asarray(im.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    assert red[100:115, 145:155].any()  # the right edge of the detection box (x = 150)
    assert green[10:50, 5:15].any()  # the left edge of the ground-truth box (x = 10)
    assert not red[8:12, 8:12].any()  # the 0.1-score detection is below the threshold


def test_visualize_main_writes_one_png_per_image(gt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for image_id, (w, h) in IMAGE_SIZES.items():
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(image_dir / f"img_{image_id:03d}.png")
    dets = [
        {"image_id": i, "category_id": c, "bbox": b, "score": 0.8} for i, boxes in GT_BOXES.items() for c, b, _ in boxes
    ]
    dets_file = tmp_path / "dets.json"
    dets_file.write_text(json.dumps(dets))
    out_dir = tmp_path / "vis"
    args = ["--gt", str(gt_file), "--dets", str(dets_file), "--image-dir", str(image_dir), "--out", str(out_dir)]
    assert visualize_main(args) == 0
    pngs = sorted(out_dir.glob("*.png"))
    assert [p.name for p in pngs] == ["img_001.png", "img_002.png", "img_003.png"]
    with Image.open(pngs[0]) as im:
        assert im.size == IMAGE_SIZES[1]
    assert visualize_main([*args, "--image-ids", "2", "--out", str(tmp_path / "vis2")]) == 0
    assert [p.name for p in (tmp_path / "vis2").glob("*.png")] == ["img_002.png"]
    assert visualize_main([*args[:2], "--dets", str(tmp_path / "nope.json"), *args[4:]]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_stats_are_nan_where_pycocotools_has_no_ground_truth(gt_file: Path):
    dets = [{"image_id": 3, "category_id": 2, "bbox": [20, 20, 70, 60], "score": 1.0}]
    stats = evaluate_coco_json(gt_file, dets, img_ids=[3])
    assert stats["AP"] == pytest.approx(100.0)
    assert math.isnan(stats["APs"])  # image 3 has one medium box only
