"""``tools/fault_inject.py``: kill -9 a short training run at random moments, resume it each time, compare the result.

For each task (CIFAR, COCO detection, Places365; generated data in the official formats) the tool trains a short
run once without interruption, then runs the same config again, killing it with SIGKILL at a random moment after it
has started training and resuming it with ``--resume``, ``--trials`` times in a chain (each resume is killed again,
then the last one runs to the end). The final weights must equal the uninterrupted run's exactly. It prints one line per
kill, then trials, failures and the largest absolute weight difference per task, and exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASKS = ("cifar", "detection", "places")


def _task_argv(task: str, data: Path, out: Path) -> list[str]:
    """A short run of ``task`` on generated data (written under ``data`` on first use) into ``out``."""
    common = ["OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "2"]
    if task == "cifar":
        from .data.demo import write_fake_cifar

        if not (data / "cifar-10-batches-py").is_dir():
            write_fake_cifar(data, "cifar10", num_train=512, num_test=200, seed=0)
        return ["--config-file", str(REPO / "configs/cifar/se_resnet110_cifar10.yaml"), *common,
                "MODEL.ARCH", "se_resnet20", "MODEL.KWARGS.depth", "8", "DATA.ROOT", str(data), "DATA.CUTOUT", "8",
                "SOLVER.IMS_PER_BATCH", "64", "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "60",
                "SOLVER.WARMUP_ITERS", "4", "TEST.IMS_PER_BATCH", "100"]  # fmt: skip
    if task == "detection":
        return ["--config-file", str(REPO / "configs/quick/coco_demo.yaml"), *common, "DATA.ROOT", str(data),
                "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "16", "SOLVER.STEPS", "(12,)",
                "SOLVER.WARMUP_ITERS", "2", "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MIN_SIZE_TEST", "96",
                "DATALOADER.NUM_WORKERS", "2", "TEST.EVAL_PERIOD", "0"]  # fmt: skip
    if task == "places":
        from .data.demo import write_fake_places365

        if not (data / "places365_val.txt").is_file():
            write_fake_places365(data, per_class_train=1, per_class_val=1, image_size=(72, 96))
        return ["--config-file", str(REPO / "configs/places365/se_resnet152_finetune.yaml"), *common,
                "MODEL.ARCH", "se_resnet18", "MODEL.WEIGHTS", "", "DATA.ROOT", str(data),
                "INPUT.CROP_SIZE", "48", "INPUT.RESIZE", "56", "DATALOADER.NUM_WORKERS", "2",
                "SOLVER.IMS_PER_BATCH", "16", "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "24",
                "SOLVER.WARMUP_ITERS", "0", "TEST.IMS_PER_BATCH", "128"]  # fmt: skip
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def _start(argv: Sequence[str], resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--resume" if resume else "--fresh", *argv]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        # a ChildProcessError is an OSError: the command wrapper reports it as one error line, exit status 2
        raise ChildProcessError(f"{what} failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")


def _max_abs_diff(a: Path, b: Path) -> float:
    import torch

    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    if wa.keys() != wb.keys():
        return float("inf")
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def _logged_iteration(out: Path) -> int:
    """The iteration of the last line of OUTPUT_DIR/metrics.jsonl (0 when none yet)."""
    path = out / "metrics.jsonl"
    try:
        lines = path.read_text().strip().splitlines()
        return int(json.loads(lines[-1]).get("iteration", 0)) if lines else 0
    except (OSError, ValueError):
        return 0  # not written yet, or a line being written


def _checkpoint_iteration(out: Path, max_iter: int) -> int:
    tag = out / "last_checkpoint"
    name = tag.read_text().strip() if tag.is_file() else ""
    if name == "model_final.pth":
        return max_iter
    return int(name[len("model_") : -len(".pth")]) if name.startswith("model_") else 0


def run_task(task: str, trials: int, work: Path, rng: random.Random) -> dict:
    """The uninterrupted run, then ``trials`` chained kill -9 + resume cycles; the comparison of their weights.

    Each kill lands at a random moment of training: once the run has logged a random iteration after its last
    checkpoint, plus a random fraction of a second (mid-step, mid-checkpoint-write or mid-evaluation)."""
    data = work / f"{task}_data"
    ref_out, cut_out = work / f"{task}_reference", work / f"{task}_killed"
    _finish(_start(_task_argv(task, data, ref_out), resume=False), f"{task}: the uninterrupted run")
    argv = _task_argv(task, data, cut_out)
    max_iter = int(argv[argv.index("SOLVER.MAX_ITER") + 1])
    kills = 0
    for trial in range(trials):
        done = _checkpoint_iteration(cut_out, max_iter)
        if done >= max_iter:
            break
        proc = _start(argv, resume=trial > 0)
        # spread the kills over the run: each lands within the next 1/trials of it
        target = rng.randint(done + 1, min(max_iter, done + max(1, max_iter // trials)))
        while proc.poll() is None and _logged_iteration(cut_out) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            print(f"{task}: trial {trial + 1}: the run finished before the kill", flush=True)
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        print(
            f"{task}: trial {trial + 1}: kill -9 at iteration {_logged_iteration(cut_out)} of {max_iter} "
            f"(resumes from {_checkpoint_iteration(cut_out, max_iter)})",
            flush=True,
        )
    _finish(_start(argv, resume=True), f"{task}: the last resume")
    diff = _max_abs_diff(ref_out / "model_final.pth", cut_out / "model_final.pth")
    return {"task": task, "trials": trials, "kills": kills, "failures": int(diff != 0.0), "max_abs_diff": diff}


def fault_inject_command(args: Any) -> int:
    """The body of tools/fault_inject.py on its parsed arguments (see se_transfer.cli.tools)."""
    rng = random.Random(args.seed)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="se_transfer_faults_"))
    results = []
    for task in args.tasks:
        results.append(run_task(task, args.trials, work / "runs", rng))
    print(f"\n{'task':<10} {'trials':>6} {'kills':>6} {'failures':>8} {'max abs diff':>13}")
    for r in results:
        print(f"{r['task']:<10} {r['trials']:>6} {r['kills']:>6} {r['failures']:>8} {r['max_abs_diff']:>13.3g}")
    print(f"runs in {work}")
    if args.json:
        print(json.dumps(results))
    return 1 if any(r["failures"] for r in results) else 0
