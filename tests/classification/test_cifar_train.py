"""End-to-end CIFAR training through tools/train_net.py on generated data in the official pickle format."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from se_transfer.cli import compare_main, train_main
from se_transfer.data.demo import write_fake_cifar
from se_transfer.engine import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TRAIN_NET = ROOT / "tools" / "train_net.py"


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", num_train=512, num_test=200, seed=0)
    write_fake_cifar(root, "cifar100", num_train=600, num_test=300, seed=0)
    return root


def _opts(root, out, **kw):
    base = {
        "MODEL.DEVICE": "cpu",
        "MODEL.ARCH": "se_resnet20",
        "MODEL.KWARGS.depth": 8,  # SE-ResNet-8: the CIFAR ResNet family at its smallest, fast on a CPU
        "DATA.ROOT": str(root),
        "OUTPUT_DIR": str(out),
        "SOLVER.IMS_PER_BATCH": 64,
        "SOLVER.EPOCHS": 0,
        "SOLVER.MAX_ITER": 8,
        "SOLVER.LR_SCHEDULER": "cosine",
        "SOLVER.CHECKPOINT_PERIOD": 4,
        "LOG_PERIOD": 2,
        "TEST.IMS_PER_BATCH": 100,
    }
    base.update(kw)
    out_list = []
    for k, v in base.items():
        if v is not None:  # None drops a default
            out_list += [k, str(v)]
    return out_list


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b, exact=True, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def test_cifar10_trains_and_evaluates_through_train_net(cifar_root, tmp_path):
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", str(ROOT / "configs/cifar/se_resnet110_cifar10.yaml"),
         *_opts(cifar_root, out, **{"SOLVER.WARMUP_ITERS": 0})],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth", "model_0000004.pth", "last_checkpoint"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")) and (out / "loss.png").is_file() and (out / "accuracy.png").is_file()
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train] == [2, 4, 6, 8]
    assert all({"lr", "ims_per_sec"} <= r.keys() for r in train)
    final = [r for r in records if "top1" in r][-1]
    assert final["iteration"] == 8 and 0 <= final["top5"] <= 100 and final["num_images"] == 200
    assert "top-1 accuracy / error (%)" in run.stdout
    assert "MODEL:\n  ARCH: se_resnet20" in (out / "config.yaml").read_text()

    # --eval-only from the saved weights reproduces the final evaluation exactly.
    ev = tmp_path / "eval"
    code = train_main(["--eval-only", *_opts(cifar_root, ev, **{"MODEL.WEIGHTS": out / "model_final.pth"})])
    assert code == 0
    again = [r for r in read_metrics(ev / "metrics.jsonl") if "top1" in r][-1]
    assert (again["top1"], again["top5"]) == (final["top1"], final["top5"])


def test_cifar100_trains_and_evaluates(cifar_root, tmp_path):
    out = tmp_path / "c100"
    assert (
        train_main(_opts(cifar_root, out, **{"DATA.DATASET": "cifar100", "MODEL.ARCH": "resnet20", "DATA.CUTOUT": 8}))
        == 0
    )
    final = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r][-1]
    assert final["num_images"] == 300 and final["top5"] >= final["top1"]
    assert _weights(out / "model_final.pth")["fc.weight"].shape[0] == 100


def test_eval_only_without_weights_is_refused(cifar_root, tmp_path, capsys):
    assert train_main(["--eval-only", *_opts(cifar_root, tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --eval-only needs MODEL.WEIGHTS") and "\n" not in err, err
    assert not (tmp_path / "ev" / "metrics.jsonl").exists()


def test_a_small_se_model_learns_the_generated_set(cifar_root, tmp_path):
    out = tmp_path / "learn"
    opts = _opts(cifar_root, out, **{"SOLVER.MAX_ITER": 120, "SOLVER.BASE_LR": 0.1, "SOLVER.WARMUP_ITERS": 10,
                                      "SOLVER.CHECKPOINT_PERIOD": 0, "LOG_PERIOD": 10})  # fmt: skip
    assert train_main(opts) == 0
    records = read_metrics(out / "metrics.jsonl")
    final = [r for r in records if "top1" in r][-1]
    # chance is 10%; the generated set is made hard enough (blended distractor patterns) that no model reaches 100%
    assert final["top1"] > 60.0, final
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] / 2


def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(cifar_root, tmp_path):
    opts = {"SOLVER.MAX_ITER": 24, "SOLVER.CHECKPOINT_PERIOD": 6, "DATA.CUTOUT": 8, "SOLVER.IMS_PER_BATCH": 96}
    full = tmp_path / "full"
    assert train_main(_opts(cifar_root, full, **opts)) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, str(TRAIN_NET), *_opts(cifar_root, out, **opts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "model_0000012.pth").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists()

    assert train_main(["--resume", *_opts(cifar_root, out, **opts)]) == 0
    _assert_same_weights(full / "model_final.pth", out / "model_final.pth", exact=True)
    full_ck = torch.load(full / "model_final.pth", weights_only=True)
    res_ck = torch.load(out / "model_final.pth", weights_only=True)
    assert res_ck["iteration"] == 24
    assert torch.equal(
        full_ck["optimizer"]["state"][0]["momentum_buffer"], res_ck["optimizer"]["state"][0]["momentum_buffer"]
    )
    evals = [r["top1"] for r in read_metrics(out / "metrics.jsonl") if "top1" in r]
    assert evals[-1] == [r["top1"] for r in read_metrics(full / "metrics.jsonl") if "top1" in r][-1]
    iters = [r["iteration"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert iters == sorted(set(iters))  # the records after the checkpoint were rewritten, not duplicated


def test_two_process_ddp_equals_one_process(cifar_root, tmp_path):
    # Frozen BN: no layer depends on the per-process batch, so 2 x 32 images == 1 x 64 images.
    opts = {"MODEL.ARCH": "se_resnet18", "MODEL.KWARGS.norm": "FrozenBN", "MODEL.KWARGS.depth": None,
            "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 0, "DATA.CUTOUT": 8}  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert train_main(_opts(cifar_root, one, **opts)) == 0
    assert train_main(["--num-gpus", "2", *_opts(cifar_root, two, **opts)]) == 0
    _assert_same_weights(one / "model_final.pth", two / "model_final.pth", exact=False, atol=1e-5)
    e1 = [r for r in read_metrics(one / "metrics.jsonl") if "top1" in r][-1]
    e2 = [r for r in read_metrics(two / "metrics.jsonl") if "top1" in r][-1]
    assert e2["num_images"] == e1["num_images"] == 200
    assert abs(e1["top1"] - e2["top1"]) <= 0.5


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cifar_root, tmp_path, capsys):
    out = tmp_path / "nan"
    opts = _opts(cifar_root, out, **{"SOLVER.BASE_LR": 1e12, "SOLVER.MAX_ITER": 40, "SOLVER.CHECKPOINT_PERIOD": 1,
                                      "LOG_PERIOD": 1, "SOLVER.LR_SCHEDULER": "constant"})  # fmt: skip
    assert train_main(opts) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err
    assert not (out / "model_final.pth").exists()
    last = out / (out / "last_checkpoint").read_text().strip()
    for k, v in _weights(last).items():
        assert torch.isfinite(v.float()).all(), k


def test_bad_input_stops_with_a_named_error(cifar_root, tmp_path, capsys):
    assert train_main(_opts(cifar_root, tmp_path / "a", **{"SOLVER.BASE_LRR": 0.1})) == 2
    assert "unknown config key 'SOLVER.BASE_LRR'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_main(_opts(empty, tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "data_batch_1" in err
    assert train_main(_opts(cifar_root, tmp_path / "c", **{"MODEL.ARCH": "se_resnet11"})) == 2
    assert "Did you mean: se_resnet110" in capsys.readouterr().err
    assert train_main(_opts(cifar_root, tmp_path / "d", **{"MODEL.KWARGS.reductio": 8})) == 2
    assert "reductio" in capsys.readouterr().err


def test_compare_runs_the_pair_and_prints_the_paper(cifar_root, tmp_path, capsys):
    code = compare_main(
        [
            "--config-file",
            str(ROOT / "configs/cifar/resnet110_cifar10.yaml"),
            *_opts(
                cifar_root,
                tmp_path / "cmp",
                **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 0, "MODEL.ARCH": None, "MODEL.KWARGS.depth": 8},
            ),
        ]  # fmt: skip
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) == {"resnet110", "se_resnet110"}
    assert summary["se_resnet110"]["paper_top1_err"] == 5.21
    assert "SE gain" in out and (tmp_path / "cmp" / "se_resnet110_cifar10" / "model_final.pth").is_file()
