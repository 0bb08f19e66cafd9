"""tools/analyze_excitation.py and tools/ablate_se.py: read a trained SE classifier (a training config and its
MODEL.WEIGHTS), detectron2-style arguments (--config-file, --num-gpus, ..., trailing KEY VALUE overrides)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .errors import expected_errors, report_error
from .train import launch_run, parse_train_args

_LAUNCH_HELP = "Several processes (--num-gpus N, or torchrun) share the images; rank 0 writes."


def _parser(prog: str, folder: str, description: str, epilog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", default="", metavar="FILE", help="the training config (CIFAR or Places365)")
    p.add_argument(
        "--image-folder",
        default="",
        metavar="DIR",
        help="read DIR/<class>/<image> instead of the config's split (e.g. ImageNet val in synset folders, with "
        "MODEL.ARCH and MODEL.WEIGHTS of an ImageNet-family model; --config-file is then optional)",
    )
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="read at most N images (default: all)")
    p.add_argument(
        "--output", default=None, metavar="DIR", help=f"where results go (default: the config's OUTPUT_DIR/{folder})"
    )
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU; on CPU: gloo)")
    p.add_argument("--num-machines", type=int, default=1, help="machines taking part (each runs this command)")
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0..num_machines-1)")
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 ('auto': one machine)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides; MODEL.WEIGHTS is required")
    # what launch_run reads of a training command line: this is an evaluation that holds its own output folder
    p.set_defaults(eval_only=True, resume=False, allow_config_change=False, fresh=False)
    return p


def _load(args: argparse.Namespace, folder: str):  # noqa: ANN202 - a CfgNode
    """The config with OUTPUT_DIR set to --output (default: a sub-folder ``folder`` of the config's OUTPUT_DIR)."""
    from ..config import ConfigError, load_config

    if args.max_images < 0:
        raise ConfigError(f"--max-images must be >= 0, got {args.max_images}")
    if not args.config_file and not args.image_folder:
        raise ConfigError("--config-file is required (the trained model's config), or --image-folder with MODEL.ARCH")
    cfg = load_config(args.config_file or None, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("MODEL.WEIGHTS is required: the trained checkpoint to read (e.g. OUTPUT_DIR/model_final.pth)")
    out = args.output or str(Path(cfg.OUTPUT_DIR) / folder)
    return load_config(args.config_file or None, [*args.opts, "OUTPUT_DIR", out])


def _launch(args: argparse.Namespace, folder: str, job, job_args) -> int:  # noqa: ANN001 - a job and its arguments
    """``job(cfg, *job_args())`` in every process of the launch, with the config of ``_load``; a bad config or
    argument is one error line, exit status 2."""
    try:
        cfg = _load(args, folder)
        rest = job_args()
    except expected_errors() as e:
        report_error(e)
        return 2
    return launch_run(cfg, args, job, (cfg, *rest))


def analyze_excitation_main(argv: Sequence[str] | None = None) -> int:
    """tools/analyze_excitation.py: excitation statistics and Fig.-6-style plots of a trained SE classifier."""
    p = _parser(
        "analyze_excitation",
        "excitation",
        "Run a trained SE classifier over its evaluation split (CIFAR test, Places365 val) and collect every SE\n"
        "block's gates per image: per block and class the mean and std of each channel's excitation, how class-\n"
        "specific (class spread) and how saturated (> 0.99, < 0.01) the gates are. Writes excitation_stats.npz and\n"
        ".json, excitation_<block>.png per plotted block and excitation_blocks.png with them all (the paper's\n"
        "Fig. 6), excitation_depth.png along the network, and prints a per-stage table.\n" + _LAUNCH_HELP,
        "examples:\n  python tools/analyze_excitation.py --config-file configs/quick/cifar10_demo.yaml \\\n"
        "      MODEL.WEIGHTS output/cifar10_demo/model_final.pth --max-images 2000\n"
        "  python tools/analyze_excitation.py --image-folder /data/imagenet/val MODEL.ARCH se_resnet50 \\\n"
        "      MODEL.WEIGHTS /weights/se_resnet50-ce0d4300.pth MODEL.DEVICE cuda --classes n01443537 n02110958",
    )
    p.add_argument("--blocks", nargs="+", default=(), metavar="SE_S_B",
                   help="blocks to plot, e.g. SE_2_3 SE_4_6 (default: the last of each stage, first/middle/last of "
                   "the last stage)")  # fmt: skip
    p.add_argument("--classes", nargs="+", default=(), metavar="CLASS",
                   help="classes to plot, by name or index (default: the 4 with the most images)")  # fmt: skip
    args = parse_train_args(p, argv)
    from ..analysis.run import AnalysisOptions, analyze_excitation

    options = AnalysisOptions(tuple(args.blocks), tuple(args.classes), args.max_images, args.image_folder)
    return _launch(args, "excitation", analyze_excitation, lambda: (options,))


def ablate_se_main(argv: Sequence[str] | None = None) -> int:
    """tools/ablate_se.py: the accuracy change when the SE blocks of chosen stages are switched off (gate = 1)."""
    p = _parser(
        "ablate_se",
        "ablation",
        "Evaluate a trained SE classifier with all its SE blocks, then with those of chosen stages switched off at\n"
        "inference (gate = 1: the block passes its input through, as a network built without SE there would), and\n"
        "print the accuracy change: the paper's section 7 stage-5 removal on your own model. Writes ablation.json.\n"
        "Stages are numbered as in the paper: 2..5 for ImageNet-family ResNets (conv2_x..conv5_x), 2..4 for the\n"
        "CIFAR networks.\n" + _LAUNCH_HELP,
        "example:\n  python tools/ablate_se.py --config-file configs/quick/cifar10_demo.yaml \\\n"
        "      MODEL.WEIGHTS output/cifar10_demo/model_final.pth --off 4 3,4",
    )
    p.add_argument("--off", nargs="+", default=(), metavar="STAGES",
                   help="stage sets to switch off, one evaluation each: 4 or 3,4 (default: each stage alone, then "
                   "all)")  # fmt: skip
    args = parse_train_args(p, argv)
    from ..analysis.run import ablate_se, parse_stage_sets

    return _launch(
        args, "ablation", ablate_se, lambda: (parse_stage_sets(args.off), args.max_images, args.image_folder)
    )
