"""The detector: backbone weights, input normalisation, whole-detector checkpoints, a train + eval run on real COCO."""

import json
import logging
from pathlib import Path

import pytest
import torch

from se_transfer.cli import train_main
from se_transfer.detection.model import NormalizingTransform, build_faster_rcnn
from se_transfer.engine import read_metrics
from se_transfer.models import CAFFE_BGR, IMAGENET_RGB, WeightsError, create_model, save_weights
from tests.helpers import randomize_batchnorm

COCO_TINY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_tiny"


def _images_and_targets():
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 100.0], [5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([2, 3])},
    ]
    return images, targets


def test_imagenet_weights_of_any_layout_feed_the_backbone(tmp_path, caplog):
    timm = pytest.importorskip("timm")
    src = timm.create_model("legacy_seresnet18")
    randomize_batchnorm(src)
    torch.save(src.state_dict(), tmp_path / "se18.pth")
    det = build_faster_rcnn("se_resnet18", 3, weights=tmp_path / "se18.pth", min_size=96, max_size=128)
    body = det.backbone.body
    torch.testing.assert_close(body.layer3[1].se.fc1.weight, src.layer3[1].se_module.fc1.weight)
    assert not any(p.requires_grad for p in body.stem.parameters())  # FREEZE_AT 2 by default
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert det.info.input_norm == IMAGENET_RGB
    with caplog.at_level(logging.WARNING):
        build_faster_rcnn("resnet18", 3, min_size=96, max_size=128)
    assert "RANDOM initialisation" in caplog.text


def test_bgr_caffe_normalisation():
    t = NormalizingTransform(96, 128, CAFFE_BGR)
    x = torch.rand(3, 4, 4)
    expected = (x.flip(0) * 255 - torch.tensor([104.0, 117.0, 123.0]).view(3, 1, 1)) / 1.0
    torch.testing.assert_close(t.normalize(x), expected, rtol=1e-5, atol=1e-4)


def test_detector_trains_and_a_whole_detector_checkpoint_reloads(tmp_path):
    det = build_faster_rcnn("se_resnet18", 3, min_size=96, max_size=128, freeze_at=0, norm="BN")
    images, targets = _images_and_targets()
    det.train()
    losses = det(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert det.backbone.body.layer1[0].se.fc2.weight.grad is not None
    det.eval()
    torch.save({"model": det.state_dict(), "iteration": 1}, tmp_path / "det.pth")
    again = build_faster_rcnn("se_resnet18", 3, weights=tmp_path / "det.pth", min_size=96, max_size=128, norm="BN")
    again.eval()
    with torch.no_grad():
        a, b = det(images), again(images)
    for x, y in zip(a, b):  # boxes in pixels: equal up to float rounding of the CPU convolutions
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsError, match="roi_heads.box_predictor.cls_score.weight"):
        build_faster_rcnn("se_resnet18", 5, weights=tmp_path / "det.pth", min_size=96, max_size=128, norm="BN")


def test_multiscale_inputs_are_not_resized_again():
    det = build_faster_rcnn("resnet18", 2, min_size=800, max_size=1333, resize_inputs=False)
    images, targets = _images_and_targets()
    batch, out_targets = det.transform(images, targets)
    assert batch.image_sizes == [(96, 128), (128, 96)]
    torch.testing.assert_close(out_targets[0]["boxes"], targets[0]["boxes"])


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco_tiny is absent")
def test_short_train_and_eval_on_real_coco_images(tmp_path):
    out = tmp_path / "coco"
    opts = {
        "TASK": "detection",
        "MODEL.ARCH": "se_resnet18",
        "MODEL.DEVICE": "cpu",
        "DATA.ROOT": str(COCO_TINY),
        "DATASETS.TRAIN": '("coco_2014_train", "coco_2014_valminusminival")',
        "DATASETS.TEST": '("coco_2014_minival",)',
        "INPUT.MIN_SIZE_TRAIN": "(96, 128)",
        "INPUT.MAX_SIZE_TRAIN": 160,
        "INPUT.MIN_SIZE_TEST": 128,
        "INPUT.MAX_SIZE_TEST": 160,
        "MODEL.FPN.OUT_CHANNELS": 32,
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.005,
        "SOLVER.MAX_ITER": 2,
        "SOLVER.STEPS": "()",
        "SOLVER.CHECKPOINT_PERIOD": 0,
        "TEST.IMS_PER_BATCH": 8,
        "LOG_PERIOD": 1,
        "OUTPUT_DIR": str(out),
    }
    argv = [x for k, v in opts.items() for x in (k, str(v))]
    assert train_main(argv) == 0
    final = [r for r in read_metrics(out / "metrics.jsonl") if "AP" in r][-1]
    assert final["iteration"] == 2
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= final.keys()
    dets = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    assert {d["category_id"] for d in dets} <= {c["id"] for c in gt["categories"]}
    assert {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()


def test_generated_shapes_demo_reaches_ap50_of_50(tmp_path, capsys):
    # The README's detection default (configs/quick/coco_demo.yaml), shortened: 100 iterations of 4 images at 128 px.
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "demo"
    argv = ["--config-file", str(root / "configs/quick/coco_demo.yaml"), "DATA.ROOT", str(tmp_path / "data"),
            "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(80,)",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    assert train_main(argv) == 0
    records = read_metrics(out / "metrics.jsonl")
    final = [r for r in records if "AP50" in r][-1]
    assert final["AP50"] >= 50.0, final
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert (out / "inference" / "coco_instances_results.json").is_file()
    assert (out / "ap.png").is_file() and (out / "loss.png").is_file()
    printed = capsys.readouterr().out
    assert "AP / AP50 / AP75 (%)" in printed and "coco_demo_val (50 images)" in printed
    assert "summary" in (out / "log.txt").read_text() and "] iter 100/100" in (out / "log.txt").read_text()

    # --eval-only of backbone-only (ImageNet) weights would score random heads: refused, naming the file.
    backbone = tmp_path / "imagenet_se_resnet18.pth"
    save_weights(create_model("se_resnet18"), backbone)
    argv = ["--eval-only", "--config-file", str(root / "configs/quick/coco_demo.yaml"), "DATA.ROOT",
            str(tmp_path / "data"), "OUTPUT_DIR", str(tmp_path / "ev"), "MODEL.WEIGHTS", str(backbone)]  # fmt: skip
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --eval-only: MODEL.WEIGHTS " + str(backbone)), err
    assert "holds no trained detector" in err[0]
    argv[-1] = str(out / "model_final.pth")  # the trained detector is evaluated
    assert train_main(argv) == 0
    assert f"weights (MODEL.WEIGHTS)  {out / 'model_final.pth'}" in capsys.readouterr().out
