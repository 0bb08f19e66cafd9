"""Command-line entry points; ``tools/*.py`` and the ``se-*`` console scripts are thin wrappers around these."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

# The models of the paper's Table 2 (with their baselines), in its order, and the paper's GFLOPs (multiply-adds).
TABLE2_MODELS = (
    "resnet50",
    "se_resnet50",
    "resnet101",
    "se_resnet101",
    "resnet152",
    "se_resnet152",
    "resnext50_32x4d",
    "se_resnext50_32x4d",
    "resnext101_32x4d",
    "se_resnext101_32x4d",
    "senet154",
)
PAPER_GFLOPS = {
    "resnet50": 3.86,
    "se_resnet50": 3.87,
    "resnet101": 7.58,
    "se_resnet101": 7.60,
    "resnet152": 11.30,
    "se_resnet152": 11.32,
    "resnext50_32x4d": 4.24,
    "se_resnext50_32x4d": 4.25,
    "resnext101_32x4d": 7.99,
    "se_resnext101_32x4d": 8.00,
}


def complexity_main(argv: Sequence[str] | None = None) -> int:
    """Print parameters and multiply-adds of one model, or a Table-2-style table of several."""
    from .engine.events import format_table
    from .models import baseline_of, list_models
    from .models.complexity import complexity_row

    parser = argparse.ArgumentParser(
        prog="complexity",
        description="Parameters and multiply-adds (the paper's 'GFLOPs') of se_transfer models. "
        "With no --model, prints the models of the paper's Table 2 with their SE overhead.",
    )
    parser.add_argument("--model", nargs="+", default=list(TABLE2_MODELS), help=f"model names: {list_models()}")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every row")
    args = parser.parse_args(argv)
    if args.input_size < 32:
        parser.error(f"--input-size must be at least 32, got {args.input_size}")

    rows = {}
    for name in args.model:
        try:
            rows[name] = complexity_row(name, args.input_size, num_classes=args.num_classes)
        except KeyError as e:
            parser.error(str(e))
    table = []
    for name, r in rows.items():
        base = rows.get(baseline_of(name) or "")
        overhead_macs = f"{100 * (r['macs_total'] / base['macs_total'] - 1):+.2f}%" if base else ""
        overhead_params = f"{100 * (r['params'] / base['params'] - 1):+.1f}%" if base else ""
        paper = PAPER_GFLOPS.get(name) if args.input_size == 224 and args.num_classes == 1000 else None
        r["se_overhead_macs_pct"] = round(100 * (r["macs_total"] / base["macs_total"] - 1), 3) if base else None
        table.append(
            [
                name,
                f"{r['params'] / 1e6:.3f}",
                f"{r['macs_total'] / 1e9:.3f}",
                f"{r['macs_conv_fc'] / 1e9:.3f}",
                overhead_params,
                overhead_macs,
                f"{paper:.2f}" if paper else "",
            ]
        )
    headers = ["model", "params (M)", "GMACs", "GMACs conv+fc", "SE params", "SE GMACs", "paper GFLOPs"]
    print(f"Complexity at {args.input_size}x{args.input_size} (one image; GMACs = conv+fc multiply-adds plus the")
    print("SE blocks' squeeze and scale, one per element each; SE columns: change over the model without SE)")
    print(format_table(headers, table))
    if args.json:
        print(json.dumps({"input_size": args.input_size, "rows": list(rows.values())}))
    return 0


def convert_weights_main(argv: Sequence[str] | None = None) -> int:
    """Convert a checkpoint in any known layout to our format (.pth / .safetensors) or detectron2's .pkl."""
    from .models import create_model, save_detectron2, save_weights
    from .models.weights import CAFFE_BGR, IMAGENET_RGB, WeightsError, inspect_weights

    parser = argparse.ArgumentParser(
        prog="convert_weights",
        description="Convert Cadene / timm-legacy / timm / torchvision / se_transfer weights. The output format "
        "follows the suffix of DST: .pkl -> detectron2 (res2.0.conv1.norm ...), .safetensors -> safetensors with "
        "our metadata, anything else -> our .pth (tensors + architecture + input normalisation).",
    )
    parser.add_argument("src", type=Path, help="input weight file (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("dst", type=Path, help="output file (.pth, .safetensors or .pkl)")
    parser.add_argument("--model", help="registered model name (default: recognised from the weights)")
    parser.add_argument(
        "--input-norm",
        choices=("auto", "imagenet", "caffe"),
        default="auto",
        help="input normalisation to record: auto (what the layout implies), imagenet (RGB [0,1], ImageNet "
        "mean/std) or caffe (BGR 0..255 minus (104, 117, 123))",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        info = inspect_weights(args.src)
        name = args.model or info.model_name
        if name is None:
            raise WeightsError(f"{args.src}: no registered model has this structure; pass --model")
        model = create_model(name, num_classes=info.num_classes, pretrained=args.src)
    except (WeightsError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.input_norm != "auto":
        model.input_norm = dict(IMAGENET_RGB if args.input_norm == "imagenet" else CAFFE_BGR)
    out = save_detectron2(model, args.dst) if args.dst.suffix == ".pkl" else save_weights(model, args.dst)
    print(f"wrote {out} ({name}, {info.layout} layout in, {info.num_classes} classes, input {model.input_norm})")
    return 0


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
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0..num_machines-1)")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 ('auto': one machine)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def parse_train_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse detectron2-style arguments with the options allowed anywhere, also after the KEY VALUE pairs.

    argparse hands everything after the first KEY to the trailing ``opts`` (REMAINDER), so ``... SOLVER.MAX_ITER 10
    --eval-only`` would become an override; options are moved in front of the pairs first."""
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
        takes = 0 if action.nargs == 0 or "=" in token else 1
        options += argv[i : i + 1 + takes]
        i += 1 + takes
    return parser.parse_args(options + rest)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures a user can cause and fix (config, data, weights, checkpoints, files, folders): one line, exit 2."""
    from .config import ConfigError
    from .data.cifar import DatasetError
    from .engine.checkpoint import CheckpointError
    from .engine.output_dir import OutputDirError
    from .engine.trainer import NonFiniteLossError
    from .models.factory import UnknownArgumentError
    from .models.weights import WeightsError
    from .registry import RegistryError

    return (
        ConfigError, DatasetError, WeightsError, NonFiniteLossError, RegistryError, UnknownArgumentError,
        OutputDirError, CheckpointError, OSError, ValueError,
    )  # fmt: skip


# Where worker processes leave their one-line error for train_main (a folder it makes for each launch).
ERROR_DIR_ENV = "SE_TRANSFER_ERROR_DIR"


def error_line(error: BaseException) -> str:
    """An expected failure as one line (OSErrors as 'FILE: reason')."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename:
        message = f"{error.filename}: {error.strerror or error}"
    return "error: " + " ".join(message.split())


class WorkerError(Exception):
    """A worker process ended with an expected failure; the message is its one ``error:`` line."""


@contextlib.contextmanager
def collect_worker_errors() -> Iterator[None]:
    """Around a launch: workers that fail as expected leave their one line in a folder made here (see
    ``report_error``) and exit with status 2; that becomes one WorkerError carrying the lowest rank's line."""
    import shutil
    import tempfile

    from torch.multiprocessing import ProcessExitedException

    error_dir = tempfile.mkdtemp(prefix="se_transfer_errors_")
    os.environ[ERROR_DIR_ENV] = error_dir  # spawned workers inherit it
    try:
        yield
    except ProcessExitedException as e:
        lines = [p.read_text() for p in sorted(Path(error_dir).glob("rank*.txt"))]
        if e.exit_code == 2 and lines:
            raise WorkerError(lines[0]) from None
        raise
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)
        os.environ.pop(ERROR_DIR_ENV, None)


def _is_log_file(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to an open log.txt (ours is a FileHandler; detectron2's a StreamHandler on it)."""
    stream = getattr(handler, "stream", None)
    if stream is None or getattr(stream, "closed", False):
        return False
    return isinstance(handler, logging.FileHandler) or Path(str(getattr(stream, "name", ""))).name.startswith("log.txt")


def report_error(error: BaseException, rank: int | None = None) -> None:
    """The traceback to the run's log file only (log.txt); the one line on stderr, or, from a worker process
    (``rank`` given), to the launch's error folder, whence the launching process prints the lowest rank's line."""
    files = [h for h in logging.getLogger("se_transfer").handlers if _is_log_file(h)]
    if files:
        record = logging.LogRecord("se_transfer", logging.ERROR, __file__, 0, "run failed: %s", (error,), None)
        record.exc_info = (type(error), error, error.__traceback__)
        for h in files:
            h.handle(record)
    folder = os.environ.get(ERROR_DIR_ENV)
    if rank is not None and folder:
        (Path(folder) / f"rank{rank:05d}.txt").write_text(error_line(error))
    else:
        print(error_line(error), file=sys.stderr, flush=True)


def _train_worker(cfg, eval_only: bool, resume: bool, allow_config_change: bool = False) -> None:
    from .engine.distributed import get_rank, get_world_size

    if get_world_size() == 1:  # one process: train_main reports what it raises
        _run_task(cfg, eval_only, resume, allow_config_change)
        return
    try:
        _run_task(cfg, eval_only, resume, allow_config_change)
    except expected_errors() as e:
        report_error(e, get_rank())
        sys.exit(2)  # the launcher ends the other processes and train_main returns 2


def _run_task(cfg, eval_only: bool, resume: bool, allow_config_change: bool) -> None:
    from .config import ConfigError
    from .engine.events import setup_logger

    setup_logger(None)
    if cfg.TASK == "classification" and cfg.DATA.DATASET == "places365":
        from .classification.places import run
    elif cfg.TASK == "classification":
        from .classification.cifar import run
    elif cfg.TASK == "detection":
        from .detection.task import run
    else:
        raise ConfigError(f"TASK must be 'classification' or 'detection', got {cfg.TASK!r}")
    run(cfg, eval_only=eval_only, resume=resume, allow_config_change=allow_config_change)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of tools/train_net.py."""
    from .config import load_config

    args = parse_train_args(train_argument_parser(), argv)
    try:
        cfg = load_config(args.config_file or None, args.opts)
    except expected_errors() as e:
        report_error(e)
        return 2
    return launch_run(cfg, args)


def launch_run(cfg, args: argparse.Namespace) -> int:
    """One run of ``cfg`` as the command line says (processes, resume, eval-only), holding its OUTPUT_DIR; 0, or 2
    after one ``error:`` line for an expected failure in this process or a worker."""
    from .engine import launch

    device_type = "cpu" if cfg.MODEL.DEVICE == "cpu" else ("cuda" if _cuda_available() else "cpu")
    try:
        with claim_run_folder(cfg.OUTPUT_DIR, args), collect_worker_errors():
            launch(
                _train_worker,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                device_type=device_type,
                args=(cfg, args.eval_only, args.resume, args.allow_config_change),
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
    from .engine.output_dir import claim_output_dir

    if int(os.environ.get("RANK", "0")) != 0 or getattr(args, "machine_rank", 0) != 0:
        return contextlib.nullcontext()
    return claim_output_dir(
        output_dir, training=not args.eval_only, resume=args.resume, fresh=getattr(args, "fresh", False)
    )


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
    from .classification.cifar import PAPER_ERRORS
    from .config import ConfigError, load_config
    from .engine import format_table, read_metrics

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
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
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
