import json

from se_transfer.cli import benchmark_cifar_main


def test_cifar_benchmark_prints_both_models_side_by_side(capsys):
    argv = ["--models", "resnet20", "se_resnet20", "--steps", "2", "--warmup", "1", "--rounds", "2",
            "--batch-size", "16", "--device", "cpu", "--json"]  # fmt: skip
    assert benchmark_cifar_main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(out.strip().splitlines()[-1])
    rows = {(r["model"], r["mode"]): r for r in data["results"]}
    assert set(rows) == {("resnet20", "eager"), ("se_resnet20", "eager")}
    assert rows[("resnet20", "eager")]["ratio_to_first"] == 1.0
    assert all(r["ims_per_sec"] > 0 for r in rows.values())
    assert "se_resnet20" in out and "images/s" in out
