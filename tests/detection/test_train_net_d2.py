"""tools/train_net_d2.py end to end on real COCO images: train, evaluate with COCOEvaluator, --eval-only, --resume, DDP.

The data is ../shared/data/coco_tiny's val2017 (80 photos), laid out as detectron2's builtin ``coco_2017_val`` under a
``DETECTRON2_DATASETS`` root; the backbone starts from a Cadene-layout SE-ResNet .pth (random weights with calibrated
BN statistics, given as MODEL.WEIGHTS). Images are small and runs short: these check the contract, not accuracy.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import calibrate_batchnorm

REPO = Path(__file__).resolve().parents[2]
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"
D2_MISSING = (
    "detectron2 is not installed: pip install ../shared/third_party/detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    " (see README, 'detectron2')"
)
pytestmark = [
    pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco_tiny is absent"),
    pytest.mark.slow,
]
CONFIG = "configs/detectron2/faster_rcnn_se_resnet50_fpn_2x.yaml"
# Small images, few proposals, every detection kept: a short CPU run that still writes real detections.
SMALL = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", '("coco_2017_val",)', "DATASETS.TEST", '("coco_2017_val",)',
    "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2",
    # random backbones have ill-conditioned gradients; clipping keeps the short run finite
    "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip
AP_LINE = re.compile(r"copypaste: ([-\d.nan]+),([-\d.nan]+),([-\d.nan]+),([-\d.nan]+),([-\d.nan]+),([-\d.nan]+)$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    pytest.importorskip("detectron2", reason=D2_MISSING)
    root = tmp_path_factory.mktemp("d2_datasets")
    (root / "coco").mkdir()
    (root / "coco" / "val2017").symlink_to(COCO_TINY / "val2017")
    (root / "coco" / "annotations").symlink_to(COCO_TINY / "annotations")
    return {**os.environ, "DETECTRON2_DATASETS": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _cadene_weights(path, timm_name):
    timm = pytest.importorskip("timm")
    model = calibrate_batchnorm(timm.create_model(timm_name))
    torch.save(model.state_dict(), path)  # layer0.conv1, layer1.0.se_module.fc1, last_linear: Cadene's layout
    return path


@pytest.fixture(scope="module")
def se_resnet50_pth(tmp_path_factory):
    return _cadene_weights(tmp_path_factory.mktemp("weights") / "se_resnet50_cadene.pth", "legacy_seresnet50")


def _run(env, *args, timeout=600):
    proc = subprocess.run(
        [sys.executable, "tools/train_net_d2.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, proc.stdout + proc.stderr


def _ap(output):
    rows = AP_LINE.findall(output)
    assert rows, output[-3000:]
    return [float(v) for v in rows[-1]]


def test_train_evaluate_eval_only_and_resume(env, se_resnet50_pth, tmp_path):
    out = tmp_path / "run"
    proc, log = _run(
        env, "--config-file", CONFIG, *SMALL, "MODEL.WEIGHTS", str(se_resnet50_pth), "OUTPUT_DIR", str(out),
        "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2",
    )  # fmt: skip
    assert proc.returncode == 0, log[-4000:]
    # the builder loaded the Cadene file into the flavour it was trained as; the checkpointer left it to the builder
    assert "holds backbone weights only" in log
    assert "backbone se_resnet50 from" in log and "INPUT.FORMAT RGB" in log
    assert "Evaluation results for bbox" in log  # detectron2's AP table
    ap = _ap(log)
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(v == v and v < 1e4 for v in losses)  # finite, not diverged
    assert any("bbox/AP" in r for r in rows)
    assert list(out.glob("events.out.tfevents.*")) and (out / "config.yaml").is_file()
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= {p.name for p in out.glob("*.pth")}
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    detections = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    meta = ckpt["se_transfer_backbone"]
    assert meta["arch"] == "se_resnet50" and meta["arch_kwargs"]["stride_in_1x1"] is True
    assert meta["arch_kwargs"]["stem_pool"] == "caffe" and ckpt["iteration"] == 3

    # --eval-only on model_final.pth: the same network rebuilt from the checkpoint, the same detections and AP
    proc, log = _run(
        env, "--config-file", CONFIG, "--eval-only", *SMALL, "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval"),
    )  # fmt: skip
    assert proc.returncode == 0, log[-4000:]
    assert _ap(log) == ap
    again = json.loads((tmp_path / "eval" / "inference" / "coco_instances_results.json").read_text())
    assert again == detections

    # --resume continues from last_checkpoint (iteration 4 of 6), with optimizer and schedule state; the backbone is
    # rebuilt from that checkpoint, so MODEL.WEIGHTS is not needed
    proc, log = _run(
        env, "--config-file", CONFIG, "--resume", *SMALL, "MODEL.WEIGHTS", "",
        "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATASETS.TEST", "()",
    )  # fmt: skip
    assert proc.returncode == 0, log[-4000:]
    assert "Starting training from iteration 4" in log
    assert f"backbone se_resnet50 from {out / 'model_final.pth'}" in log
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 5
    iters = [json.loads(line).get("iteration") for line in (out / "metrics.json").read_text().splitlines()]
    assert max(i for i in iters if i is not None) == 5


def test_two_processes_with_gloo_train_and_evaluate(env, tmp_path):
    weights = _cadene_weights(tmp_path / "se_resnet18_cadene.pth", "legacy_seresnet18")
    out = tmp_path / "ddp"
    proc, log = _run(
        env, "--config-file", CONFIG, "--num-gpus", "2", *SMALL, "MODEL.SE_TRANSFER.ARCH", "se_resnet18",
        "MODEL.WEIGHTS", str(weights), "MODEL.FPN.OUT_CHANNELS", "64", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
    )  # fmt: skip
    assert proc.returncode == 0, log[-4000:]
    assert "on 2 devices" in log  # detectron2's inference summary: both processes evaluated their half
    _ap(log)
    detections = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert len({d["image_id"] for d in detections}) == 80  # the two halves gathered on rank 0
    assert (out / "model_final.pth").is_file()
