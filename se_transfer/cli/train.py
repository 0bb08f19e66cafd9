"""Training commands: tools/train_net.py (``train_main``) and tools/compare.py (``compare_main``), detectron2-style."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import WorkerError, collect_worker_errors, expected_errors, report_error


def train_argument_parser() -> argparse.ArgumentParser:
    """detectron2-style arguments of tools/train_net.py."""
    parser = argparse.ArgumentParser(
        prog="train_net",
        description="Train or evaluate a model as a config file says. Trailing KEY VALUE pairs override config keys "
        "(values are read as Python literals), e.g. SOLVER.MAX_ITER 100 MODEL.DEVICE cpu.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Several machines: run the same command on each with --num-machines M --machine-rank R "
        "--dist-url tcp://HOST0:PORT; or use torchrun (RANK/WORLD_SIZE/LOCAL_RANK are read from the environment).",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (may use _BASE_)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS and exit")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint if present")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: apply config values that differ from the run's config.yaml (else an error lists them)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over in an OUTPUT_DIR that holds an earlier run (deletes its checkpoints, metrics and plots)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU; on CPU: gloo)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part (each runs this command)")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0..num_machines-1)")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 ('auto': one machine)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def parse_train_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse detectron2-style arguments with the options allowed anywhere, also after the KEY VALUE pairs.

    argparse hands everything after the first KEY to the trailing ``opts`` (REMAINDER), so ``... SOLVER.MAX_ITER 10
    --eval-only`` would become an override; options are taken out of the pairs first. An option of several values
    (``--blocks A B``) takes the tokens up to the next option or config KEY (``MODEL.WEIGHTS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = parser._option_string_actions
    options: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        action = actions.get(name)
        if action is None or not token.startswith("-"):
            rest.append(token)
            i += 1
            continue
        if action.nargs in ("+", "*") and "=" not in token:
            takes = 0
            while i + 1 + takes < len(argv) and not _option_or_key(argv[i + 1 + takes]):
                takes += 1
        else:
            takes = 0 if action.nargs == 0 or "=" in token else 1
        options += argv[i : i + 1 + takes]
        i += 1 + takes
    if rest[:1] and rest[0].startswith("-"):  # an unknown option: argparse says so
        return parser.parse_args(options + rest)
    args = parser.parse_args(options)
    args.opts = rest
    return args


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def _option_or_key(token: str) -> bool:
    return (token.startswith("-") and not token[1:2].isdigit()) or bool(_CONFIG_KEY.match(token))


def _worker(job, *job_args) -> None:  # noqa: ANN001 - a picklable module-level function
    from ..engine.distributed import get_rank, get_world_size

    if get_world_size() == 1:  # one process: launch_run reports what it raises
        job(*job_args)
        return
    try:
        job(*job_args)
    except expected_errors() as e:
        report_error(e, get_rank())
        sys.exit(2)  # the launcher ends the other processes and launch_run returns 2


def _run_task(cfg, eval_only: bool, resume: bool, allow_config_change: bool) -> None:
    from ..engine.events import setup_logger
    from ..tasks import task_for

    setup_logger(None)
    task_for(cfg)(cfg, eval_only=eval_only, resume=resume, allow_config_change=allow_config_change)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of tools/train_net.py."""
    from ..config import load_config

    args = parse_train_args(train_argument_parser(), argv)
    try:
        cfg = load_config(args.config_file or None, args.opts)
    except expected_errors() as e:
        report_error(e)
        return 2
    return launch_run(cfg, args)


def launch_run(cfg, args: argparse.Namespace, job=None, job_args: tuple = ()) -> int:  # noqa: ANN001
    """One run of ``cfg`` as the command line says (processes, resume, eval-only), holding its OUTPUT_DIR; 0, or 2
    after one ``error:`` line for an expected failure in this process or a worker. Each process runs the config's
    task, or ``job(*job_args)`` (a module-level function) when given."""
    from ..engine import launch

    if job is None:
        job, job_args = _run_task, (cfg, args.eval_only, args.resume, args.allow_config_change)
    device_type = "cpu" if cfg.MODEL.DEVICE == "cpu" else ("cuda" if _cuda_available() else "cpu")
    try:
        with claim_run_folder(cfg.OUTPUT_DIR, args), collect_worker_errors():
            launch(
                _worker,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                device_type=device_type,
                args=(job, *job_args),
            )
    except expected_errors() as e:
        report_error(e)
        return 2
    except WorkerError as e:
        print(e, file=sys.stderr, flush=True)
        return 2
    return 0


def claim_run_folder(output_dir: str, args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The output-folder claim of one run (``engine.output_dir``), taken once per run: by machine 0's starting
    process (torchrun: by rank 0)."""
    from ..config import config_key
    from ..engine.output_dir import claim_output_dir

    if int(os.environ.get("RANK", "0")) != 0 or getattr(args, "machine_rank", 0) != 0:
        return contextlib.nullcontext()
    held = contextlib.ExitStack()
    with config_key("OUTPUT_DIR", output_dir):  # a folder that cannot be made or locked names the key
        held.enter_context(
            claim_output_dir(
                output_dir, training=not args.eval_only, resume=args.resume, fresh=getattr(args, "fresh", False)
            )
        )
    return held


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _twin_config(path: Path) -> tuple[Path, Path]:
    """(baseline config, SE config) for a config file named NAME_DATASET.yaml or se_NAME_DATASET.yaml."""
    name = path.name
    base = path.with_name(name[3:]) if name.startswith("se_") else path
    se = path if name.startswith("se_") else path.with_name("se_" + name)
    for p in (base, se):
        if not p.is_file():
            raise FileNotFoundError(f"paired config not found: {p} (configs come as NAME_X.yaml and se_NAME_X.yaml)")
    return base, se


def compare_main(argv: Sequence[str] | None = None) -> int:
    """Train a baseline and its SE twin with the same seed and recipe; print their errors beside the paper's."""
    parser = train_argument_parser()
    parser.prog = "compare"
    parser.description = (
        "Run the baseline and SE configs of one recipe (e.g. resnet110_cifar10.yaml and se_resnet110_cifar10.yaml) "
        "with the same seed and overrides, each into its own OUTPUT_DIR (OUTPUT_DIR given here: a sub-folder per "
        "config), and print their errors side by side."
    )
    args = parse_train_args(parser, argv)
    if not args.config_file:
        parser.error("--config-file is required")
    from ..classification.cifar import PAPER_ERRORS
    from ..config import ConfigError, load_config
    from ..engine import format_table, read_metrics

    try:
        pair = _twin_config(Path(args.config_file))
        cfgs = []
        for path in pair:
            cfg = load_config(path, args.opts)
            if "OUTPUT_DIR" in args.opts[0::2]:  # one folder given: each run goes into a sub-folder of it
                cfg = load_config(path, list(args.opts) + ["OUTPUT_DIR", str(Path(cfg.OUTPUT_DIR) / path.stem)])
            cfgs.append(cfg)
        if cfgs[0].MODEL.ARCH == cfgs[1].MODEL.ARCH:
            raise ConfigError(f"both runs would train {cfgs[0].MODEL.ARCH}: do not override MODEL.ARCH here")
        if cfgs[0].OUTPUT_DIR == cfgs[1].OUTPUT_DIR:
            raise ConfigError(f"both configs write to OUTPUT_DIR {cfgs[0].OUTPUT_DIR}; give them their own")
    except expected_errors() as e:
        report_error(e)
        return 2
    rows, summary = [], {}
    for cfg in cfgs:
        status = launch_run(cfg, args)
        if status:
            return status
        evals = [r for r in read_metrics(Path(cfg.OUTPUT_DIR) / "metrics.jsonl") if "top1_err" in r]
        last = evals[-1]
        paper = PAPER_ERRORS.get((cfg.MODEL.ARCH, cfg.DATA.DATASET))
        summary[cfg.MODEL.ARCH] = {"top1_err": last["top1_err"], "top5_err": last["top5_err"], "paper_top1_err": paper}
        rows.append(
            [cfg.MODEL.ARCH, f"{last['top1_err']:.2f}", f"{last['top5_err']:.2f}", f"{paper:.2f}" if paper else "-"]
        )
    (b, bs), (s, ss) = summary.items()
    paper_gain = f"{bs['paper_top1_err'] - ss['paper_top1_err']:+.2f}" if bs["paper_top1_err"] else "-"
    rows.append(["SE gain (baseline - SE)", f"{bs['top1_err'] - ss['top1_err']:+.2f}",
                 f"{bs['top5_err'] - ss['top5_err']:+.2f}", paper_gain])  # fmt: skip
    print(f"\n{cfgs[0].DATA.DATASET}: same seed ({cfgs[0].SEED}) and recipe for both")
    print(format_table(["model", "top-1 err (%)", "top-5 err (%)", "paper top-1 err (%)"], rows))
    print(json.dumps(summary))
    return 0
