"""tools/analyze_excitation.py and tools/ablate_se.py end to end, on checkpoints of short CIFAR and Places365 runs
(generated data in the official formats)."""

import json
from pathlib import Path

import numpy as np
import pytest

from se_transfer.cli import ablate_se_main, analyze_excitation_main, parse_train_args, train_main
from se_transfer.cli.analysis import _parser
from se_transfer.data.demo import write_fake_cifar, write_fake_places365
from se_transfer.engine import read_metrics
from se_transfer.models import create_model, save_weights

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A trained SE-ResNet-8 on generated CIFAR-10 (10 classes, 120 test images)."""
    tmp = tmp_path_factory.mktemp("cifar_analysis")
    root, out = tmp / "data", tmp / "run"
    write_fake_cifar(root, "cifar10", num_train=256, num_test=120, seed=0)
    argv = ["--config-file", str(ROOT / "configs/quick/cifar10_demo.yaml"), "MODEL.KWARGS.depth", "8",
            "DATA.ROOT", str(root), "DATA.GENERATE_DEMO", "False", "OUTPUT_DIR", str(out), "SOLVER.EPOCHS", "0",
            "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "64", "TEST.IMS_PER_BATCH", "50", "TEST.EVAL_PERIOD", "0",
            "SOLVER.CHECKPOINT_PERIOD", "0"]  # fmt: skip
    assert train_main(argv) == 0
    final = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r][-1]
    common = ["--config-file", str(ROOT / "configs/quick/cifar10_demo.yaml"), "MODEL.KWARGS.depth", "8",
              "DATA.ROOT", str(root), "DATA.GENERATE_DEMO", "False", "TEST.IMS_PER_BATCH", "50"]  # fmt: skip
    return {"root": root, "weights": out / "model_final.pth", "final": final, "common": common, "tmp": tmp}


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_analysis_writes_stats_plots_and_table(cifar_run, tmp_path, capsys):
    out = tmp_path / "excitation"
    argv = [*cifar_run["common"], "MODEL.WEIGHTS", str(cifar_run["weights"]), "--output", str(out),
            "--classes", "cat", "1"]  # fmt: skip
    assert analyze_excitation_main(argv) == 0
    printed = capsys.readouterr().out
    assert "over 120 images of cifar10" in printed and "SE_4_x" in printed and "class spread" in printed

    doc = json.loads((out / "excitation_stats.json").read_text())
    assert doc["num_images"] == 120 and doc["top1"] == cifar_run["final"]["top1"]  # the same pass as evaluation
    assert doc["plotted_classes"] == ["cat", "automobile"]  # in the order asked
    assert doc["plotted_blocks"] == ["SE_2_1", "SE_3_1", "SE_4_1"]  # SE-ResNet-8: one block per stage
    assert [s["stage"] for s in doc["stages"]] == [2, 3, 4] and len(doc["blocks"]) == 3

    arrays = _npz(out / "excitation_stats.npz")
    assert list(arrays["blocks"]) == list(doc["blocks"]) and arrays["counts"].sum() == 120
    assert list(arrays["classes"])[:3] == ["airplane", "automobile", "bird"]
    mean = arrays["SE_4_1.mean"]
    assert mean.shape == (10, 64) and ((mean >= 0) & (mean <= 1)).all()
    np.testing.assert_allclose(doc["blocks"]["SE_4_1"]["class_mean"]["cat"], mean[3], atol=1e-6)
    # the mean over all images is the image-weighted mean of the class means
    weighted = (mean * arrays["counts"][:, None]).sum(0) / arrays["counts"].sum()
    np.testing.assert_allclose(arrays["SE_4_1.all_mean"], weighted, atol=1e-6)
    block = doc["blocks"]["SE_4_1"]
    assert block["class_spread"] == pytest.approx(mean.std(0).mean(), abs=1e-6)

    for name in [*doc["plotted_blocks"], "blocks", "depth"]:
        assert (out / f"excitation_{name}.png").read_bytes()[:8] == PNG
    assert (out / "config.yaml").is_file()

    # another run into the folder with other blocks leaves no plot of the first run behind
    assert analyze_excitation_main([*argv, "--blocks", "SE_3_1", "--max-images", "30"]) == 0
    assert sorted(p.name for p in out.glob("excitation_SE_*.png")) == ["excitation_SE_3_1.png"]
    assert json.loads((out / "excitation_stats.json").read_text())["num_images"] == 30


def test_two_processes_give_the_statistics_of_one(cifar_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    argv = [*cifar_run["common"], "MODEL.WEIGHTS", str(cifar_run["weights"])]
    assert analyze_excitation_main([*argv, "--output", str(one)]) == 0
    assert analyze_excitation_main([*argv, "--output", str(two), "--num-gpus", "2"]) == 0
    a, b = _npz(one / "excitation_stats.npz"), _npz(two / "excitation_stats.npz")
    assert a.keys() == b.keys() and (a["counts"] == b["counts"]).all()
    for key in a:
        if key.endswith("mean") or key.endswith("std"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    ja, jb = (json.loads((d / "excitation_stats.json").read_text()) for d in (one, two))
    assert ja["top1"] == jb["top1"] and ja["num_images"] == jb["num_images"] == 120


def test_ablation_switches_stages_off(cifar_run, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = [*cifar_run["common"], "MODEL.WEIGHTS", str(cifar_run["weights"]), "--output", str(out)]
    assert ablate_se_main(argv) == 0
    printed = capsys.readouterr().out
    assert "none (all SE on)" in printed and "stage 2, 3, 4" in printed
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r["off"] for r in rows] == [[], [2], [3], [4], [2, 3, 4]]
    assert rows[0]["top1"] == cifar_run["final"]["top1"] and rows[0]["delta_top1"] == 0
    assert rows[-1]["blocks_off"] == ["SE_2_1", "SE_3_1", "SE_4_1"] and rows[1]["blocks_off"] == ["SE_2_1"]
    assert all(r["delta_top1"] == pytest.approx(r["top1"] - rows[0]["top1"]) for r in rows)

    assert ablate_se_main([*argv, "--off", "4", "--max-images", "40"]) == 0
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r["off"] for r in rows] == [[], [4]] and rows[0]["num_images"] == 40


def test_bad_requests_are_one_error_line(cifar_run, tmp_path, capsys):
    weights = ["MODEL.WEIGHTS", str(cifar_run["weights"]), "--output", str(tmp_path / "o")]
    cases = [
        (analyze_excitation_main, [*weights, "--blocks", "SE_5_1"], "--blocks SE_5_1: no such SE block"),
        (analyze_excitation_main, [*weights, "--classes", "zebra"], "--classes 'zebra': no such class"),
        (analyze_excitation_main, [], "MODEL.WEIGHTS is required"),
        (ablate_se_main, [*weights, "--off", "5"], "no SE blocks in stage(s) [5]"),
        (ablate_se_main, [*weights, "--off", "4,x"], "--off '4,x': expected stage numbers"),
    ]
    for main, extra, message in cases:
        assert main([*cifar_run["common"], *extra]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err

    baseline = save_weights(create_model("resnet20", num_classes=10, depth=8), tmp_path / "resnet8.pth")
    argv = [*cifar_run["common"], "MODEL.ARCH", "resnet20", "MODEL.WEIGHTS", str(baseline)]
    assert analyze_excitation_main([*argv, "--output", str(tmp_path / "b")]) == 2
    assert "has no SE blocks: nothing to analyse" in capsys.readouterr().err


def test_options_of_several_values_stop_at_the_next_option_or_config_key():
    p = _parser("analyze_excitation", "excitation", "", "")
    p.add_argument("--blocks", nargs="+", default=())
    args = parse_train_args(p, ["--config-file", "c.yaml", "--blocks", "SE_2_1", "SE_3_1", "MODEL.WEIGHTS", "w.pth",
                                "--max-images", "5", "SOLVER.BASE_LR", "-1"])  # fmt: skip
    assert args.blocks == ["SE_2_1", "SE_3_1"] and args.max_images == 5
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SOLVER.BASE_LR", "-1"]


def test_places365_checkpoint(tmp_path, capsys):
    root, run = tmp_path / "places", tmp_path / "run"
    write_fake_places365(root, per_class_train=1, per_class_val=1, image_size=(72, 96))
    common = ["--config-file", str(ROOT / "configs/quick/places365_demo.yaml"), "DATA.ROOT", str(root),
              "DATA.GENERATE_DEMO", "False", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(run)]  # fmt: skip
    assert train_main([*common, "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "2",
                       "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]) == 0  # fmt: skip
    final = [r for r in read_metrics(run / "metrics.jsonl") if "top1" in r][-1]
    weights = ["MODEL.WEIGHTS", str(run / "model_final.pth")]
    assert analyze_excitation_main([*common, *weights, "--classes", "0", "2"]) == 0
    out = run / "excitation"  # the default: under the training run's OUTPUT_DIR
    doc = json.loads((out / "excitation_stats.json").read_text())
    assert doc["num_images"] == 365 and doc["top1"] == pytest.approx(final["top1"])
    assert doc["plotted_blocks"] == ["SE_2_2", "SE_3_2", "SE_4_2", "SE_5_1", "SE_5_2"]
    arrays = _npz(out / "excitation_stats.npz")
    assert arrays["SE_5_2.mean"].shape == (365, 512) and (arrays["counts"] == 1).all()
    assert (out / "excitation_SE_5_2.png").read_bytes()[:8] == PNG
    assert "SE_5_x" in capsys.readouterr().out

    assert ablate_se_main([*common, *weights, "--off", "5", "2,3,4,5"]) == 0
    rows = json.loads((run / "ablation" / "ablation.json").read_text())["rows"]
    assert [r["off"] for r in rows] == [[], [5], [2, 3, 4, 5]] and rows[0]["top1"] == pytest.approx(final["top1"])
    assert all(r["num_images"] == 365 for r in rows)

    assert analyze_excitation_main([*common, *weights, "TEST.TEN_CROP", "True"]) == 2  # one crop per image only
    assert "TEST.TEN_CROP" in capsys.readouterr().err


def test_an_image_folder_read_by_an_imagenet_family_model(tmp_path, capsys):
    from PIL import Image

    from se_transfer.classification.model import attach_input_normalization
    from se_transfer.data.decode import read_rgb_image
    from se_transfer.data.transforms import ClassificationTransform
    from tests.helpers import randomize_batchnorm

    folder = tmp_path / "val"
    rng = np.random.default_rng(0)
    for cls in ("n0001", "n0002", "n0003"):
        (folder / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / cls / f"{i}.jpg")
    src = create_model("se_resnet18", num_classes=3)
    randomize_batchnorm(src)
    weights = save_weights(src, tmp_path / "se_resnet18_3.pth")
    argv = ["--image-folder", str(folder), "MODEL.ARCH", "se_resnet18", "MODEL.WEIGHTS", str(weights),
            "MODEL.DEVICE", "cpu", "INPUT.CROP_SIZE", "32", "INPUT.RESIZE", "36", "DATALOADER.NUM_WORKERS", "0",
            "TEST.IMS_PER_BATCH", "4", "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    assert analyze_excitation_main([*argv, "--classes", "n0002"]) == 0
    doc = json.loads((tmp_path / "out" / "excitation" / "excitation_stats.json").read_text())
    assert doc["num_images"] == 6 and doc["plotted_classes"] == ["n0002"]

    # top-1 as computed here: the same decode, resize + centre crop and the weights' input normalisation
    model = attach_input_normalization(create_model("se_resnet18", num_classes=3, pretrained=weights)).eval()
    transform = ClassificationTransform(False, size=32, resize=36, mean=(0, 0, 0), std=(1, 1, 1))
    paths = sorted(folder.glob("*/*.jpg"))
    import torch

    with torch.no_grad():
        logits = model(torch.stack([transform(read_rgb_image(p)) for p in paths]))
    labels = torch.tensor([int(p.parent.name[-1]) - 1 for p in paths])
    assert doc["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())
    assert ablate_se_main(argv) == 0

    # two folders for a 3-class model: statistics per folder, no accuracy, and no ablation
    (folder / "n0003" / "0.jpg").unlink()
    (folder / "n0003" / "1.jpg").unlink()
    (folder / "n0003").rmdir()
    assert analyze_excitation_main(argv) == 0
    doc = json.loads((tmp_path / "out" / "excitation" / "excitation_stats.json").read_text())
    assert "top1" not in doc and doc["num_images"] == 4 and "2 folder classes" in capsys.readouterr().out
    assert ablate_se_main(argv) == 2
    assert "has 2 class folders for a model of 3 outputs" in capsys.readouterr().err
    argv[1] = str(tmp_path / "nowhere")
    assert analyze_excitation_main(argv) == 2
    assert "--image-folder" in capsys.readouterr().err
