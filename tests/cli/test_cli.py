import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from se_transfer.cli import complexity_main, convert_weights_main
from se_transfer.models import create_model
from tests.helpers import randomize_batchnorm

ROOT = Path(__file__).resolve().parents[2]


def test_complexity_table_like_table_2(capsys):
    assert complexity_main(["--model", "resnet50", "se_resnet50", "senet154", "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["model"]: r for r in json.loads(out.strip().splitlines()[-1])["rows"]}
    assert rows["se_resnet50"]["params"] == 28_088_024
    assert abs(rows["se_resnet50"]["macs_total"] / 1e9 - 3.87) <= 0.02
    assert 0 < rows["se_resnet50"]["se_overhead_macs_pct"] < 0.5
    assert rows["senet154"]["se_overhead_macs_pct"] is None  # no baseline in the table
    table = out.splitlines()
    assert any(line.startswith("se_resnet50") and "+9.9%" in line and "3.87" in line for line in table)


def test_complexity_script_and_unknown_model():
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "complexity.py"), "--model", "se_resnet50", "--input-size", "160"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "se_resnet50" in run.stdout and "160x160" in run.stdout
    assert complexity_main(["--model", "se_resnet55"]) == 2


def test_convert_weights_recognises_the_model_and_writes_every_format(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    src = timm.create_model("legacy_seresnext50_32x4d")
    randomize_batchnorm(src)
    src.eval()
    torch.save(src.state_dict(), tmp_path / "cadene.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = src(x)
    for dst in ("ours.pth", "ours.safetensors"):
        assert convert_weights_main([str(tmp_path / "cadene.pth"), str(tmp_path / dst)]) == 0
        model = create_model("se_resnext50_32x4d", pretrained=tmp_path / dst).eval()
        assert model.info.source.layout == "se_transfer"
        with torch.no_grad():
            assert (model(x) - expected).abs().max() < 1e-4
    assert "se_resnext50_32x4d" in capsys.readouterr().out
    assert convert_weights_main([str(tmp_path / "cadene.pth"), str(tmp_path / "d2.pkl"), "--input-norm", "caffe"]) == 0
    with open(tmp_path / "d2.pkl", "rb") as f:
        d2 = pickle.load(f)
    assert d2["se_transfer"]["input_norm"]["channel_order"] == "BGR"
    assert d2["model"]["res2.0.conv2.weight"].shape == (128, 4, 3, 3)


def test_convert_weights_errors_are_reported(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert convert_weights_main([str(tmp_path / "junk.pth"), str(tmp_path / "out.pth")]) == 2
    assert "junk.pth" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_options_are_read_anywhere_also_after_the_overrides():
    from se_transfer.cli import parse_train_args, train_argument_parser

    args = parse_train_args(
        train_argument_parser(),
        ["--config-file", "c.yaml", "SOLVER.MAX_ITER", "10", "--eval-only", "MODEL.DEVICE", "cpu", "--num-gpus", "2",
         "SOLVER.BASE_LR", "-0.5", "--dist-url=tcp://h:1"],
    )  # fmt: skip
    assert args.eval_only and args.num_gpus == 2 and args.dist_url == "tcp://h:1" and args.config_file == "c.yaml"
    assert args.opts == ["SOLVER.MAX_ITER", "10", "MODEL.DEVICE", "cpu", "SOLVER.BASE_LR", "-0.5"]


TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py") if p.name != "train_net_d2.py")


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_instant_it_imports_no_torch(tool):
    # detectron2's train_net_d2.py keeps detectron2's own parser (which imports torch); every other tool parses first.
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{tool!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'tools' / tool)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported before parsing'\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.endswith("ok\n"), run.stderr[-2000:]
    assert "usage:" in run.stdout and "options:" in run.stdout


def test_the_shared_choices_are_the_librarys():
    from se_transfer.benchmark import AMP_DTYPES
    from se_transfer.classification.benchmark import MODES
    from se_transfer.cli import args
    from se_transfer.ops.dispatch import SE_IMPLS

    assert args.SE_IMPL_CHOICES == tuple(SE_IMPLS) and set(args.AMP_CHOICES) == set(AMP_DTYPES)
    assert set(MODES) == {"eager", "compiled", "cudagraphs"}


@pytest.mark.parametrize(
    "main, argv, message",
    [
        ("benchmark_main", ["--model", "se_resnt50", "--device", "cpu"], "error: Unknown model 'se_resnt50'"),
        ("benchmark_places_main", ["--root", "/nope"], "error: --root: Places365 root not found: /nope"),
        ("benchmark_cifar_main", ["--model", "resnet20", "--device", "cuda:x"], None),
        ("eval_coco_main", ["--gt", "/nope/gt.json", "--dets", "/nope/d.json"],
         "error: ground-truth file not found: /nope/gt.json"),
        ("visualize_main", ["--gt", "g", "--dets", "d", "--image-dir", "/nope", "--out", "o"],
         "error: --image-dir: image folder not found: /nope"),
        ("convert_weights_main", ["/nope/w.pth", "out.pth"], "error: weight file not found: /nope/w.pth"),
        ("complexity_main", ["--model", "se_resnet55"], "error: Unknown model 'se_resnet55'"),
    ],
)  # fmt: skip
def test_every_tool_fails_with_one_error_line(main, argv, message, capsys):
    import se_transfer.cli as cli

    if message is None:  # argparse's own refusal of a malformed value: usage, then one error line, status 2
        with pytest.raises(SystemExit) as e:
            getattr(cli, main)(argv)
        assert e.value.code == 2 and "is not one of auto, cpu, cuda, cuda:N" in capsys.readouterr().err
        return
    assert getattr(cli, main)(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_compare_with_missing_data_is_one_line_naming_data_root(tmp_path, capsys):
    from se_transfer.cli import compare_main

    argv = ["--config-file", str(ROOT / "configs/cifar/resnet110_cifar10.yaml"), "DATA.ROOT", str(tmp_path / "none"),
            "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]  # fmt: skip
    assert compare_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: DATA.ROOT {tmp_path / 'none'}: missing folder") and err.count("\n") == 1, err


def test_list_models_filters_by_family_pattern_and_se(capsys):
    from se_transfer.cli import list_models_main
    from se_transfer.models import list_models

    assert list_models("se_resnet*", family="cifar") == ["se_resnet110", "se_resnet20"]
    assert "resnet50" in list_models(family="imagenet", se=False) and "senet154" in list_models(se=True)
    assert not set(list_models(family="cifar")) & set(list_models(family="imagenet"))
    assert list_models_main(["--family", "imagenet", "--se", "se_resnext*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["model"] for r in rows] == ["se_resnext101_32x4d", "se_resnext50_32x4d"]
    assert rows[0] == {"model": "se_resnext101_32x4d", "family": "imagenet", "se": True, "baseline": "resnext101_32x4d"}


def test_an_output_dir_that_cannot_be_made_names_the_key(tmp_path, capsys):
    from se_transfer.cli import train_main

    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    argv = ["--config-file", str(ROOT / "configs/quick/cifar10_demo.yaml"), "OUTPUT_DIR", str(out)]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: OUTPUT_DIR {out}") and err.count("\n") == 1, err


def test_a_failed_fault_injection_run_is_one_error_line(monkeypatch, capsys):
    from se_transfer import faults
    from se_transfer.cli import fault_inject_main

    def failing(task, trials, work, rng):
        code = "import sys; print('traceback...', file=sys.stderr); print('boom', file=sys.stderr); sys.exit(3)"
        faults._finish(subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True), "cifar: run")

    monkeypatch.setattr(faults, "run_task", failing)
    assert fault_inject_main(["--tasks", "cifar", "--trials", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: cifar: run failed (exit 3): ['boom']"
