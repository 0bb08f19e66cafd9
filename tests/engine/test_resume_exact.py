"""kill -9 + --resume ends with exactly the weights of an uninterrupted run, for detection and Places365 with workers.

Each sample's augmentation is seeded by (SEED, epoch, its position in the epoch), not by a worker's stream, so the
resumed run's new workers augment every remaining sample as the uninterrupted run's did.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from se_transfer.cli import train_main

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = REPO.parent / "shared" / "data" / "places365" / "categories_places365.txt"
pytestmark = pytest.mark.slow


def _kill_when(argv, checkpoint, timeout=300):
    """Run tools/train_net.py ``argv`` and kill -9 it once ``checkpoint`` exists."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "train_net.py"), *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_same_final_weights(a, b):
    wa = torch.load(a / "model_final.pth", map_location="cpu", weights_only=True)
    wb = torch.load(b / "model_final.pth", map_location="cpu", weights_only=True)
    assert wa["iteration"] == wb["iteration"]
    assert wa["model"].keys() == wb["model"].keys()
    diffs = {k: (wa["model"][k].double() - wb["model"][k].double()).abs().max().item() for k in wa["model"]}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]


def _interrupted_equals_uninterrupted(argv_for, kill_at):
    full, cut = argv_for("full"), argv_for("cut")
    assert train_main(full.argv) == 0
    _kill_when(cut.argv, cut.out / f"model_{kill_at:07d}.pth")
    assert not (cut.out / "model_final.pth").exists()
    assert train_main(["--resume", *cut.argv]) == 0
    _assert_same_final_weights(full.out, cut.out)


class _Run:
    def __init__(self, out, argv):
        self.out, self.argv = out, argv


def test_detection_with_workers_resumes_bit_exact(tmp_path):
    data = tmp_path / "data"

    def argv_for(name):
        out = tmp_path / name
        return _Run(out, [
            "--config-file", str(REPO / "configs/quick/coco_demo.yaml"), "DATA.ROOT", str(data), "OUTPUT_DIR", str(out),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "3", "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MIN_SIZE_TEST", "96",
            "DATALOADER.NUM_WORKERS", "2", "DATASETS.TEST", "('coco_demo_val',)", "LOG_PERIOD", "1",
        ])  # fmt: skip

    _interrupted_equals_uninterrupted(argv_for, kill_at=3)


@pytest.mark.skipif(not CATEGORIES.is_file(), reason="../shared/data/places365 is absent")
def test_places365_with_workers_resumes_bit_exact(tmp_path):
    from se_transfer.data.demo import write_fake_places365

    root = tmp_path / "places"
    write_fake_places365(root, classes_file=CATEGORIES, per_class_train=1, per_class_val=1, image_size=(72, 96))

    def argv_for(name):
        out = tmp_path / name
        return _Run(out, [
            "--config-file", str(REPO / "configs/places365/se_resnet152_finetune.yaml"), "MODEL.ARCH", "se_resnet18",
            "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATA.ROOT", str(root), "INPUT.CROP_SIZE", "48",
            "INPUT.RESIZE", "56", "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "16",
            "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "3",
            "LOG_PERIOD", "1", "TEST.IMS_PER_BATCH", "64",
        ])  # fmt: skip

    _interrupted_equals_uninterrupted(argv_for, kill_at=3)


def test_fault_injection_tool_reports_no_failure(tmp_path, capsys):
    from se_transfer.cli import fault_inject_main

    assert fault_inject_main(["--tasks", "cifar", "--trials", "1", "--work-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    (result,) = json.loads(out.strip().splitlines()[-1])
    assert result["task"] == "cifar" and result["failures"] == 0 and result["max_abs_diff"] == 0.0
    assert result["kills"] >= 1 and "kill -9 at iteration" in out
