"""Places365 end to end: a small tree in the official layout (real category list) fine-tunes and evaluates."""

import json
from pathlib import Path

import pytest
import torch

from se_transfer.cli import train_main
from se_transfer.data.demo import write_fake_places365
from se_transfer.engine import read_metrics
from se_transfer.models import create_model, save_weights
from tests.helpers import randomize_batchnorm

CATEGORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "places365" / "categories_places365.txt"


@pytest.mark.skipif(not CATEGORIES.is_file(), reason="../shared/data/places365 is absent")
def test_places365_finetunes_and_eval_only_reproduces(tmp_path, capsys):
    root = tmp_path / "places"
    write_fake_places365(root, classes_file=CATEGORIES, per_class_train=1, per_class_val=1, image_size=(72, 96))
    src = create_model("se_resnet18")
    randomize_batchnorm(src)
    weights = save_weights(src, tmp_path / "imagenet_se_resnet18.pth")
    root_configs = Path(__file__).resolve().parents[2] / "configs" / "places365"
    out = tmp_path / "run"
    common = ["MODEL.ARCH", "se_resnet18", "MODEL.DEVICE", "cpu", "DATA.ROOT", str(root), "INPUT.CROP_SIZE", "64",
              "INPUT.RESIZE", "72", "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "73"]  # fmt: skip
    argv = ["--config-file", str(root_configs / "se_resnet152_finetune.yaml"), *common,
            "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "32",
            "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "0", "LOG_PERIOD", "1",
            "MODEL.BACKBONE.FREEZE_AT", "2"]  # fmt: skip
    assert train_main(argv) == 0
    final = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r][-1]
    assert final["num_images"] == 365 and final["top5"] >= final["top1"]
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["model"]["fc.weight"].shape == (365, 512)
    torch.testing.assert_close(saved["model"]["stem.conv1.weight"], src.stem.conv1.weight)  # frozen stem kept
    preds = [json.loads(line) for line in (out / "inference" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 365 and len(preds[0]["top5"]) == 5 and preds[0]["label"].startswith("/")
    per_class = json.loads((out / "inference" / "per_class_accuracy.json").read_text())
    assert len(per_class) == 365 and (out / "inference" / "confused_pairs.png").is_file()

    ev = tmp_path / "eval"
    argv = [*common, "--eval-only", "DATA.DATASET", "places365", "MODEL.WEIGHTS", str(out / "model_final.pth"),
            "OUTPUT_DIR", str(ev)]  # fmt: skip
    argv = ["--eval-only", *[a for a in argv if a != "--eval-only"]]
    assert train_main(argv) == 0
    again = [r for r in read_metrics(ev / "metrics.jsonl") if "top1" in r][-1]
    assert (again["top1"], again["top5"]) == (final["top1"], final["top5"])

    # ImageNet weights (a 1000-class head) cannot be evaluated on Places365: the 365-class head would be random.
    argv[argv.index("MODEL.WEIGHTS") + 1] = str(weights)
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert f"MODEL.WEIGHTS {weights} holds no classifier for these 365 classes" in err, err
