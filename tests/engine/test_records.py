"""Run records on tiny models: metrics.jsonl (strict JSON, fresh/resumed/eval-only rows), one TensorBoard events file,
per-iteration lines in log.txt, the closing summary, plots, and the SOLVER.STEPS warning."""

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from se_transfer.config import get_cfg
from se_transfer.engine.events import MetricsWriter, plot_metrics, read_metrics, setup_logger
from se_transfer.engine.runner import Schedule, TrainingTask, run_training
from se_transfer.engine.summary import format_duration, print_summary, summary_rows
from se_transfer.engine.trainer import LoggingHook, LRSchedulerHook, Trainer


def _strict_records(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _events(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def test_non_finite_numbers_are_written_as_null(tmp_path):
    writer = MetricsWriter(tmp_path, start_iter=0)
    writer.write({"iteration": 1, "loss": float("nan"), "AP": float("inf"), "nested": [float("-inf"), 1.5]})
    writer.close()
    assert _strict_records(tmp_path / "metrics.jsonl") == [
        {"iteration": 1, "loss": None, "AP": None, "nested": [None, 1.5]}
    ]


def test_fresh_resumed_and_eval_only_rows_and_one_events_file(tmp_path):
    w = MetricsWriter(tmp_path, start_iter=None)  # an evaluation-only run first
    w.write({"iteration": 0, "eval_only": True, "top1": 10.0})
    w.close()
    w = MetricsWriter(tmp_path, start_iter=0)  # a fresh training run: the stale eval-only row goes
    for i in (2, 4, 6):
        w.write({"iteration": i, "loss": 1.0 / i})
    w.close()
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2, 4, 6]
    w = MetricsWriter(tmp_path, start_iter=4)  # resumed at 4: what came after is rewritten
    w.write({"iteration": 6, "loss": 0.5})
    w.close()
    assert [(r["iteration"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (2, 0.5),
        (4, 0.25),
        (6, 0.5),
    ]
    w = MetricsWriter(tmp_path, start_iter=None)  # evaluation only: appended
    w.write({"iteration": 0, "eval_only": True, "top1": 50.0})
    w.close()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4
    assert len(_events(tmp_path)) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(_events(tmp_path)[0]))
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("loss")] == [(2, 0.5), (4, 0.25), (6, 0.5)]


class _Data:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def batches(self, start):
        i = start
        while True:
            j = (i * 8) % 64
            yield self.x[j : j + 8], self.y[j : j + 8]
            i += 1


def _loss(model, batch):
    x, y = batch
    err = model(x).squeeze(1) - y
    return {"loss_a": (err**2).mean(), "loss_b": err.abs().mean()}


def test_log_txt_has_a_line_per_log_period_that_the_console_does_not_repeat(tmp_path, capsys):
    setup_logger(tmp_path)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    trainer = Trainer(model, opt, _Data().batches, _loss, max_iter=12)
    writer = MetricsWriter(tmp_path, start_iter=0, tensorboard=False)
    trainer.register_hooks([LRSchedulerHook(sched), LoggingHook(4, writer, ims_per_batch=8)])
    trainer.train()
    writer.close()
    lines = [ln for ln in (tmp_path / "log.txt").read_text().splitlines() if "] iter " in ln]
    assert [ln.split("] iter ")[1].split()[0] for ln in lines] == ["4/12", "8/12", "12/12"]
    assert all("loss_a" in ln and "loss_b" in ln and "img/s" in ln and "eta 0:00:" in ln for ln in lines)
    assert "] iter " not in capsys.readouterr().out  # the progress bar shows them on the console
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [4, 8, 12]
    assert records[-1]["loss"] < records[0]["loss"]  # the regression is being fitted


def _cfg(tmp_path, **solver):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.ARCH = "tiny"
    cfg.DATA.DATASET = "cifar10"
    cfg.LOG_PERIOD = 2
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 0
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _run(cfg, evals):
    model = nn.Linear(4, 1)

    def evaluate():
        evals.append(1)
        return {"top1": 50.0 + 10 * len(evals), "top5": 90.0 + len(evals)}

    task = TrainingTask(_Data().batches, _loss, evaluate)
    return run_training(cfg, model, task, Schedule(max_iter=8, stop_iter=8, steps=[4, 8, 12]), torch.device("cpu"))


def test_run_training_warns_of_milestones_past_the_end_and_plots_every_loss(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    cfg.TEST.EVAL_PERIOD = 4
    evals = []
    with caplog.at_level(logging.WARNING, logger="se_transfer"):
        _, results = _run(cfg, evals)
    warned = [r.getMessage() for r in caplog.records if "SOLVER.STEPS" in r.getMessage()]
    assert len(warned) == 1 and "[8, 12]" in warned[0], warned
    assert results["iterations"] == 8 and results["eval_time_s"] >= 0 and len(evals) == 2
    names = sorted(Path(p).name for p in results["plots"])
    assert names == ["accuracy.png", "loss.png", "lr.png"]
    assert all(Path(p).stat().st_size > 5000 for p in results["plots"])


def test_plots_of_ap_and_one_evaluation(tmp_path):
    w = MetricsWriter(tmp_path, start_iter=0, tensorboard=False)
    w.write({"iteration": 10, "loss": 2.0, "loss_classifier": 1.0, "loss_box_reg": 1.0})
    w.write({"iteration": 20, "AP": 30.0, "AP50": 55.0, "AP75": 28.0, "APs": float("nan")})
    w.close()
    written = plot_metrics(tmp_path / "metrics.jsonl", tmp_path, title="tiny on demo")
    assert sorted(p.name for p in written) == ["ap.png", "loss.png"]


def test_the_summary_names_weights_data_times_and_files_and_goes_to_log_txt(tmp_path, capsys):
    setup_logger(tmp_path)
    cfg = _cfg(tmp_path)
    cfg.MODEL.WEIGHTS = "/weights/w.pth"
    (tmp_path / "model_final.pth").write_bytes(b"x")
    results = {"iterations": 8, "start_iter": 4, "train_time_s": 2.0, "eval_time_s": 75.0, "plots": ["a.png"]}
    rows = summary_rows(cfg, results, data="demo (10 images)", metrics=[("top-1 (%)", "50.00")])
    text = print_summary("tiny on demo", rows)
    table = dict((r[0], r[1]) for r in rows)
    assert table["weights (MODEL.WEIGHTS)"] == "/weights/w.pth" and table["iterations"] == "8 (resumed at 4)"
    assert table["training time"] == "2.0 s (2.00 it/s)" and table["evaluation time"] == "1 min 15 s"
    assert table["checkpoint"].endswith("model_final.pth") and table["log"].endswith("log.txt")
    assert text in capsys.readouterr().out
    assert "top-1 (%)" in (tmp_path / "log.txt").read_text()
    assert format_duration(3 * 3600 + 125) == "3 h 02 min"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_eval_only_rows_with_non_finite_metrics_stay_valid_json(tmp_path, value):
    from se_transfer.engine.runner import record_evaluation

    record_evaluation(str(tmp_path), {"AP": value, "AP50": 1.0})
    assert _strict_records(tmp_path / "metrics.jsonl") == [{"iteration": 0, "eval_only": True, "AP": None, "AP50": 1.0}]


def test_a_busy_machine_is_announced(caplog):
    from se_transfer.engine.setup import warn_if_busy

    with caplog.at_level(logging.WARNING, logger="se_transfer"):
        assert warn_if_busy(load=7.5, cores=2)
        assert not warn_if_busy(load=1.5, cores=2)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "load average 7.5 on 2 CPU cores" in messages[0] and "3.8x" in messages[0]
