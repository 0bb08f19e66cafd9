"""Run every shell command of README.md, in order, with small overrides (a CI step of ``.ci/run``).

    python -m tests.readme_commands [--list] [--work-dir DIR]

Each command of a ```bash block is matched by the first rule below whose pattern it fits. The rule says what to add
so that it runs on a CPU in seconds: generated data in the official formats (or ../shared/data's real COCO images)
behind the README's placeholder paths (/data/..., /weights/...), a few iterations, small inputs, fewer processes. A
command no rule matches is an error: a new README command must come with its rule. The few commands that cannot run
here (they need the network) are listed with the reason and counted as skipped. Runs happen in a work folder that
links configs/ and tools/ of the repository, so the README's relative paths (output/...) resolve there.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"

_RUN = ["MODEL.DEVICE", "cpu", "LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0"]
_CIFAR = [*_RUN, "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "32",
          "TEST.IMS_PER_BATCH", "100", "SOLVER.CHECKPOINT_PERIOD", "0", "MODEL.KWARGS.depth", "8"]  # fmt: skip
_SMALL_DETECTION = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
                    "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
                    "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
_COCO = [*_RUN, *_SMALL_DETECTION, "MODEL.ARCH", "se_resnet18", "MODEL.FPN.OUT_CHANNELS", "32", "TEST.IMS_PER_BATCH",
         "8", "SOLVER.CHECKPOINT_PERIOD", "0"]  # fmt: skip
_D2 = ["MODEL.DEVICE", "cpu", *_SMALL_DETECTION, "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0",
       "SOLVER.CHECKPOINT_PERIOD", "1000",
       "DATASETS.TRAIN", '("coco_2017_val",)', "DATASETS.TEST", '("coco_2017_val",)', "MODEL.SE_TRANSFER.ARCH", "",
       "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # fmt: skip
_PLACES = [*_RUN, "MODEL.ARCH", "se_resnet18", "INPUT.CROP_SIZE", "32", "INPUT.RESIZE", "36", "SOLVER.EPOCHS", "0",
           "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "16", "TEST.IMS_PER_BATCH", "73",
           "SOLVER.CHECKPOINT_PERIOD", "0"]  # fmt: skip


@dataclass
class Rule:
    """Commands matching ``pattern`` (a regex searched in the command) get ``append`` and ``replace`` applied."""

    pattern: str
    append: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    skip: str = ""  # why the command is not run here (empty: it is run)
    needs_coco: bool = False


RULES = [
    Rule(r"^pip install -e (\.|\.\[test\])$", skip="the install .ci/run performs before this check"),
    Rule(r"^pip install torch torchvision --index-url", skip="needs the PyTorch package index (no network in CI)"),
    Rule(r"^python -m pytest -q tests$", skip="the test command: .ci/run runs it before this check"),
    Rule(r"^python tools/train_net\.py --config-file configs/quick/cifar10_demo\.yaml( --fresh)?$"),  # in full
    Rule(r"^python tools/(analyze_excitation|ablate_se)\.py --config-file configs/quick/cifar10_demo\.yaml"),  # in full
    Rule(r"configs/quick/coco_demo\.yaml", append=("SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(10,)")),
    Rule(r"configs/quick/places365_demo\.yaml", append=("SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "4")),
    Rule(r"^python tools/visualize_coco\.py"),
    Rule(r"^python -c \"import timm, torch"),
    Rule(r"^python tools/convert_weights\.py"),
    Rule(r"^torchrun .*configs/cifar/", append=tuple(_CIFAR), replace=(("--nproc-per-node 8", "--nproc-per-node 2"),)),
    Rule(
        r"^python tools/(train_net|compare)\.py --config-file configs/cifar/",
        append=tuple(_CIFAR),
        replace=(("--num-gpus 4", "--num-gpus 2"),),
    ),  # fmt: skip
    Rule(
        r"^python tools/train_net\.py --config-file configs/coco/",
        append=tuple(_COCO),
        replace=(("--num-gpus 8", "--num-gpus 1"),),
        needs_coco=True,
    ),  # fmt: skip
    Rule(
        r"^DETECTRON2_DATASETS=/data python tools/train_net_d2\.py",
        append=tuple(_D2),
        replace=(("--num-gpus 8", "--num-gpus 1"),),
        needs_coco=True,
    ),  # fmt: skip
    Rule(r"^python tools/eval_coco\.py", needs_coco=True),
    Rule(
        r"^python tools/train_net\.py --config-file configs/places365/",
        append=tuple(_PLACES),
        replace=(("--num-gpus 8", "--num-gpus 1"),),
    ),  # fmt: skip
    Rule(r"^python tools/(list_models|complexity)\.py"),
    Rule(r"^python tools/benchmark\.py", append=("--rounds", "2", "--iters", "1", "--warmup", "0", "--no-peer")),
    Rule(
        r"^python tools/benchmark_cifar\.py",
        append=("--iters", "1", "--warmup", "1", "--rounds", "1", "--batch-size", "16"),
    ),  # fmt: skip
    Rule(
        r"^python tools/benchmark_places_input\.py",
        append=(
            "--fake-images",
            "40",
            "--batches",
            "2",
            "--batch-size",
            "8",
            "--model-batch",
            "2",
            "--model-iters",
            "1",
            "--model-warmup",
            "0",
        ),
    ),  # fmt: skip
    Rule(r"^python tools/fault_inject\.py", replace=(("--trials 2", "--trials 1"),)),
]


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The commands of README.md's ```bash blocks, in order: continuation lines joined, comments dropped, ``&&``
    chains split, repeats left out."""
    text = readme.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            for part in " ".join(shlex.quote(w) if w != "&&" else w for w in words).split(" && "):
                command = _plain(part)
                if command not in commands:
                    commands.append(command)
    return commands


def _plain(command: str) -> str:
    """A command re-spelt with minimal quoting (so rules read it as written in the README)."""
    return " ".join(w if re.fullmatch(r"[\w@%+=:,./()\[\]-]+", w) else f'"{w}"' for w in shlex.split(command))


def rule_for(command: str) -> Rule:
    """The first rule matching ``command``; a command without one is an error naming it."""
    for rule in RULES:
        if re.search(rule.pattern, command):
            return rule
    raise LookupError(f"README command without a rule in tests/readme_commands.py: {command}")


def prepare(work: Path) -> dict[str, str]:
    """Data and weights behind the README's placeholders, in ``work``; returns the path substitutions."""
    import torch

    from se_transfer.data.demo import write_fake_cifar, write_fake_places365
    from tests.helpers import calibrate_batchnorm

    for name in ("configs", "tools"):
        if not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    write_fake_cifar(work / "data" / "cifar", "cifar10", num_train=256, num_test=100)
    write_fake_cifar(work / "data" / "cifar", "cifar100", num_train=300, num_test=100)
    write_fake_places365(work / "data" / "places365", per_class_train=1, per_class_val=1, image_size=(40, 48),
                         split_sets=("train-standard", "train-challenge", "val"))  # fmt: skip
    if COCO_TINY.is_dir():
        coco = work / "data" / "coco"
        if not coco.exists():
            coco.symlink_to(COCO_TINY)
    import timm

    weights = work / "weights"
    weights.mkdir(exist_ok=True)
    model = calibrate_batchnorm(timm.create_model("legacy_seresnet18"))  # Cadene's layout, a small SE-ResNet
    for name in ("se_resnet50-ce0d4300.pth", "se_resnet152-d17c99b7.pth"):
        torch.save(model.state_dict(), weights / name)
    torch.save(model.state_dict(), work / "se_resnet50-ce0d4300.pth")  # the convert_weights examples' input
    return {"/data/cifar": str(work / "data" / "cifar"), "/data/places365": str(work / "data" / "places365"),
            "/data/coco": str(work / "data" / "coco"), "/weights/": str(weights) + "/",
            "DETECTRON2_DATASETS=/data": f"DETECTRON2_DATASETS={work / 'data'}"}  # fmt: skip


def build(command: str, rule: Rule, paths: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(environment additions, argv) of ``command`` as the rule runs it."""
    for old, new in rule.replace:
        command = command.replace(old, new)
    for old, new in paths.items():
        command = command.replace(old, new)
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    return env, words + list(rule.append)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="readme_commands", description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print each command with its rule; run nothing")
    p.add_argument("--work-dir", type=Path, default=None, help="where data and runs go (default: a temporary folder)")
    args = p.parse_args(argv)
    commands = [(c, rule_for(c)) for c in readme_commands()]
    if args.list:
        for c, r in commands:
            print(f"{'skip: ' + r.skip if r.skip else 'run'}: {c}")
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="se_transfer_readme_"))
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work)
    ran, skipped, failed = 0, [], []
    for command, rule in commands:
        if rule.skip or (rule.needs_coco and not COCO_TINY.is_dir()):
            skipped.append((command, rule.skip or "../shared/data/coco_tiny is absent"))
            continue
        env, words = build(command, rule, paths)
        start = time.perf_counter()
        proc = subprocess.run(words, cwd=work, env={**os.environ, **env}, capture_output=True, text=True)
        took = time.perf_counter() - start
        ran += 1
        print(f"[{'ok' if proc.returncode == 0 else 'FAILED'} {took:5.1f} s] {command}", flush=True)
        if proc.returncode != 0:
            failed.append(command)
            print((proc.stdout + proc.stderr)[-3000:], flush=True)
    for command, why in skipped:
        print(f"[skipped: {why}] {command}")
    print(f"README commands: {ran} run, {len(failed)} failed, {len(skipped)} skipped; work folder {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
