"""tools/benchmark.py: side-by-side timing, the printed table and the JSON record."""

import json

import pytest
import torch

from se_transfer.benchmark import Contender, paired_ratio, time_side_by_side
from se_transfer.cli import benchmark_main


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_cifar_pair_in_both_modes(capsys):
    argv = "--model se_resnet20 --baseline resnet20 --device cpu --batch-size 4 --mode both"
    argv += " --warmup 1 --iters 1 --rounds 2 --no-peer --json"
    assert benchmark_main(argv.split()) == 0
    out = capsys.readouterr().out
    rec = _last_json(out)
    assert rec["model"] == "se_resnet20" and rec["baseline"] == "resnet20" and rec["image_size"] == 32
    assert [r["mode"] for r in rec["results"]] == ["train", "inference"]
    for r in rec["results"]:
        assert r["model_ips"] > 0 and r["baseline_ips"] > 0 and "peer" not in r
        assert r["ratio_of_medians"] == pytest.approx(r["model_ips"] / r["baseline_ips"])
        q1, q3 = r["ratio_quartiles"]
        assert q1 <= r["throughput_ratio"] <= q3
        assert rec["throughput_ratio"][r["mode"]] == r["throughput_ratio"]
    table = out.split("{")[0]
    assert "se_resnet20" in table and "resnet20" in table and "images/s" in table


def test_imagenet_pair_with_timm_peer(capsys):
    pytest.importorskip("timm")
    argv = "--model se_resnet18 --baseline resnet18 --device cpu --mode inference --warmup 0 --iters 1 --rounds 1"
    assert benchmark_main([*argv.split(), "--json"]) == 0
    rec = _last_json(capsys.readouterr().out)
    (r,) = rec["results"]
    assert rec["batch_size"] == 1 and rec["image_size"] == 224 and rec["amp"] == "none"
    assert r["peer"]["name"] == "timm:seresnet18"
    # one round: the paired ratio is that round's ratio, the ratio of the (one-sample) medians
    assert r["peer"]["ratio_to_baseline"] == pytest.approx(r["peer"]["ips"] / r["baseline_ips"])
    assert r["throughput_ratio"] == pytest.approx(r["model_ips"] / r["baseline_ips"])
    assert isinstance(rec["throughput_ratio"], float)


def test_models_must_take_the_same_inputs(capsys):
    assert benchmark_main("--model se_resnet20 --baseline resnet50 --device cpu --rounds 1 --no-peer".split()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "take other inputs" in err and err.count("\n") == 1, err


def test_bad_arguments_are_refused(capsys):
    assert benchmark_main("--model se_resnet20 --baseline resnet20 --device cpu --rounds 0".split()) == 2
    assert capsys.readouterr().err.startswith("error: --batch-size, --iters and --rounds must be >= 1")
    if not torch.cuda.is_available():
        assert benchmark_main("--device cuda".split()) == 2
        assert capsys.readouterr().err == "error: --device cuda: no CUDA device is available\n"


def test_contenders_alternate_and_rotate():
    order = []
    contenders = [Contender(name, lambda n=name: order.append(n)) for name in "abc"]
    time_side_by_side(contenders, torch.device("cpu"), warmup=1, iters=2, rounds=3)
    assert order[:3] == ["a", "b", "c"]  # warm-up
    timed = order[3:]
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert all(len(c.times) == 3 and min(c.times) >= 0 for c in contenders)
    assert contenders[0].images_per_second(8) == pytest.approx(8 / sorted(contenders[0].times)[1])


def test_paired_ratio_cancels_drift_between_rounds():
    # the machine slows down 3x from round 3 on; within each round the model takes 5% longer than the baseline
    base = [1.0, 1.0, 3.0, 3.0, 3.0]
    model = [t * 1.05 for t in base]
    ratio, q1, q3 = paired_ratio(model, base)
    assert ratio == pytest.approx(1 / 1.05) and q1 == pytest.approx(1 / 1.05) and q3 == pytest.approx(1 / 1.05)
    # quartiles of the per-round ratios (baseline time / model time): 0.5, 0.8, 1.0, 1.25, 2.0
    ratio, q1, q3 = paired_ratio([2.0, 1.25, 1.0, 0.8, 0.5], [1.0] * 5)
    assert (ratio, q1, q3) == pytest.approx((1.0, 0.8, 1.25))
    with pytest.raises(ValueError, match="one time per round"):
        paired_ratio([1.0, 2.0], [1.0])
