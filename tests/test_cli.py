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

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(SystemExit):
        complexity_main(["--model", "se_resnet55"])


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
        assert model.pretrained_source["layout"] == "se_transfer"
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
