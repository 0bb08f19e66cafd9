"""The tools' command lines (tools/*.py and the se-* console scripts): each parser is built without importing torch,
so ``--help`` is instant; the work starts after parsing, and an expected failure is one ``error:`` line, exit 2."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from . import args as a
from .errors import UsageError, command

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
    """tools/complexity.py: parameters and multiply-adds of one model, or a Table-2-style table of several."""
    p = a.parser(
        "complexity",
        "Parameters and multiply-adds (the paper's 'GFLOPs') of se_transfer models. With no --model, prints the\n"
        "models of the paper's Table 2 with their SE overhead.",
        "example: python tools/complexity.py --model se_resnet50 resnet50 --input-size 224",
    )
    a.add_model(p, list(TABLE2_MODELS), several=True, what="models to count")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    a.add_json(p)
    return _complexity(p.parse_args(argv))


@command
def _complexity(args: argparse.Namespace) -> None:
    from ..engine.events import format_table
    from ..models import baseline_of
    from ..models.complexity import complexity_row

    if args.input_size < 32:
        raise UsageError(f"--input-size must be at least 32, got {args.input_size}")
    rows = {name: complexity_row(name, args.input_size, num_classes=args.num_classes) for name in args.model}
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


def list_models_main(argv: Sequence[str] | None = None) -> int:
    """tools/list_models.py: the registered models, filtered by family, name pattern and SE."""
    p = a.parser(
        "list_models",
        "The registered models (the names MODEL.ARCH and --model take), with their family and baseline.",
        "examples:\n  python tools/list_models.py --family imagenet --se\n  python tools/list_models.py 'se_resnext*'",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'se_resnet*'")
    p.add_argument("--family", choices=("imagenet", "cifar"), default=None, help="ImageNet family or CIFAR models")
    se = p.add_mutually_exclusive_group()
    se.add_argument("--se", dest="se", action="store_true", default=None, help="SE models only")
    se.add_argument("--no-se", dest="se", action="store_false", help="models without SE only")
    p.add_argument("--params", action="store_true", help="also count parameters (builds each model: slower)")
    a.add_json(p)
    return _list_models(p.parse_args(argv))


@command
def _list_models(args: argparse.Namespace) -> None:
    from ..engine.events import format_table
    from ..models import baseline_of, create_model, list_models
    from ..models.registry import has_se, model_entry

    names = list_models(args.pattern, family=args.family, se=args.se)
    rows = []
    for name in names:
        row = {"model": name, "family": model_entry(name).family, "se": has_se(name), "baseline": baseline_of(name)}
        if args.params:
            row["params_m"] = round(sum(t.numel() for t in create_model(name).parameters()) / 1e6, 3)
        rows.append(row)
    headers = ["model", "family", "SE", "baseline"] + (["params (M)"] if args.params else [])
    cells = [[r["model"], r["family"], "yes" if r["se"] else "no", r["baseline"] or "-"]
             + ([f"{r['params_m']:.3f}"] if args.params else []) for r in rows]  # fmt: skip
    print(format_table(headers, cells, align="llll" + "r" * args.params))
    print(f"{len(rows)} model(s)")
    if args.json:
        print(json.dumps(rows))


def convert_weights_main(argv: Sequence[str] | None = None) -> int:
    """tools/convert_weights.py: any known layout to our format (.pth / .safetensors) or detectron2's .pkl."""
    p = a.parser(
        "convert_weights",
        "Convert Cadene / timm-legacy / timm / torchvision / detectron2 / se_transfer weights. The output format\n"
        "follows the suffix of DST: .pkl -> detectron2 (res2.0.conv1.norm ...), .safetensors -> safetensors with our\n"
        "metadata, anything else -> our .pth (tensors + architecture + input normalisation).",
        "example: python tools/convert_weights.py se_resnet50-ce0d4300.pth se_resnet50.pth",
    )
    p.add_argument("src", type=Path, help="input weight file (.pth/.pt/.bin/.safetensors/.pkl)")
    p.add_argument("dst", type=Path, help="output file (.pth, .safetensors or .pkl)")
    p.add_argument("--model", default=None, metavar="NAME", help="registered model name (default: read off the file)")
    p.add_argument(
        "--input-norm",
        choices=("auto", "imagenet", "caffe"),
        default="auto",
        help="input normalisation to record: auto (what the layout implies), imagenet (RGB [0,1], ImageNet "
        "mean/std) or caffe (BGR 0..255 minus (104, 117, 123))",
    )
    return _convert_weights(p.parse_args(argv))


@command
def _convert_weights(args: argparse.Namespace) -> None:
    from ..models import create_model, save_detectron2, save_weights
    from ..models.info import CAFFE_BGR, IMAGENET_RGB
    from ..models.layouts import WeightsError
    from ..models.weights import inspect_weights

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    info = inspect_weights(args.src)
    name = args.model or info.model_name
    if name is None:
        raise WeightsError(f"{args.src}: no registered model has this structure; pass --model")
    model = create_model(name, num_classes=info.num_classes, pretrained=args.src)
    if args.input_norm != "auto":
        model.info.input_norm = dict(IMAGENET_RGB if args.input_norm == "imagenet" else CAFFE_BGR)
    out = save_detectron2(model, args.dst) if args.dst.suffix == ".pkl" else save_weights(model, args.dst)
    print(f"wrote {out} ({name}, {info.layout} layout in, {info.num_classes} classes, input {model.info.input_norm})")


def benchmark_main(argv: Sequence[str] | None = None) -> int:
    """tools/benchmark.py: images/s of a model beside its baseline (and timm's peer), side by side in one process."""
    p = a.parser(
        "benchmark",
        "Images/s of a model and its baseline, timed in alternating rounds in one process so that machine drift\n"
        "hits both alike; throughput_ratio is the median of the per-round ratios (see docs/speed.md).",
        "examples:\n  python tools/benchmark.py --device cpu --batch-size 1 --mode inference\n"
        "  python tools/benchmark.py --device cuda --batch-size 256 --amp bf16 --channels-last --compile",
    )
    a.add_model(p, "se_resnet50", what="model to time")
    p.add_argument("--baseline", default="resnet50", metavar="NAME", help="registered model to compare with")
    a.add_device(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per iteration (default: 256 CUDA, 1 CPU)")
    p.add_argument("--mode", choices=("train", "inference", "both"), default="both", help="what an iteration is")
    a.add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and weights")
    p.add_argument("--compile", action="store_true", help="torch.compile every network (same mode for all)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode with --compile")
    a.add_se_impl(p)
    peer = p.add_mutually_exclusive_group()
    peer.add_argument("--peer", default=None, help="timm model timed as a peer (default: timm's version of --model)")
    peer.add_argument("--no-peer", action="store_true", help="do not time a timm peer")
    a.add_timing(p, iters=None, warmup=None, rounds=None, unit="iterations (default: 10 CUDA, 2 CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    a.add_json(p)
    args = p.parse_args(argv)
    from ..benchmark import benchmark_command

    return command(_with_device(benchmark_command))(args)


def benchmark_cifar_main(argv: Sequence[str] | None = None) -> int:
    """tools/benchmark_cifar.py: CIFAR training images/s of several models side by side."""
    p = a.parser(
        "benchmark_cifar",
        "CIFAR training images/s (data and augmentation on the device) of several models, side by side.",
        "example: python tools/benchmark_cifar.py --model resnet110 se_resnet110 --device cpu --iters 5",
    )
    a.add_model(p, ["resnet110", "se_resnet110"], several=True, what="models to time (the first is the reference)")
    p.add_argument("--modes", nargs="+", choices=("eager", "compiled", "cudagraphs"), default=None,
                   help="how the step runs (default: all on CUDA, eager on CPU)")  # fmt: skip
    a.add_device(p)
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    a.add_timing(p, iters=50, warmup=15, rounds=5, unit="steps")
    a.add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and weights")
    a.add_se_impl(p)
    a.add_json(p)
    args = p.parse_args(argv)
    from ..classification.benchmark import benchmark_cifar_command

    return command(_with_device(benchmark_cifar_command))(args)


def benchmark_places_main(argv: Sequence[str] | None = None) -> int:
    """tools/benchmark_places_input.py: Places365 input-pipeline images/s per worker count vs a training step."""
    p = a.parser(
        "benchmark_places_input",
        "Does Places365 loading keep up with training? The input pipeline (read + JPEG decode + augmentation) in\n"
        "images/s per DataLoader worker count, beside a model's training step (forward + backward + SGD) on the\n"
        "device. Both are per process, i.e. per rank.",
        "example: python tools/benchmark_places_input.py --root /data/places365 --workers 4 8 16",
    )
    p.add_argument("--root", default=None, help="Places365 root (default: a generated tree in a temporary folder)")
    p.add_argument("--split", default="train-standard", choices=("train-standard", "train-challenge", "val"),
                   help="which list to read")  # fmt: skip
    p.add_argument("--large", action="store_true", help="read the large image folders instead of the 256 ones")
    p.add_argument("--fake-images", type=int, default=2000, help="images of the generated tree (256 x 341 JPEGs)")
    p.add_argument("--batch-size", type=int, default=64, help="input-pipeline batch size")
    p.add_argument("--batches", type=int, default=20, help="timed input-pipeline batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="DataLoader worker counts to try")
    a.add_model(p, "se_resnet152", what="model of the training step ('none' to skip)")
    p.add_argument("--model-batch", type=int, default=16, help="training-step batch size")
    p.add_argument("--model-iters", "--model-steps", dest="model_iters", type=int, default=5,
                   help="timed training steps (median taken)")  # fmt: skip
    p.add_argument("--model-warmup", type=int, default=2, help="untimed training steps first")
    a.add_device(p)
    a.add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and weights")
    a.add_json(p)
    args = p.parse_args(argv)
    from ..classification.places_benchmark import benchmark_places_command

    return command(_with_device(benchmark_places_command))(args)


def _with_device(body):  # noqa: ANN001, ANN202 - a command body
    """``body`` with ``args.device`` resolved first ('auto' -> cuda or cpu; a CUDA device without a GPU: error)."""

    def run(args: argparse.Namespace) -> int:
        args.device = a.resolve_device(args.device)
        return body(args)

    return run


def eval_coco_main(argv: Sequence[str] | None = None) -> int:
    """tools/eval_coco.py: COCO box evaluation (pycocotools) of a results JSON."""
    p = a.parser(
        "eval_coco",
        "COCO box evaluation (pycocotools) of a detections JSON; prints pycocotools' 12 stats and an AP table (%).",
        "example: python tools/eval_coco.py --gt instances_val2017.json --dets coco_instances_results.json",
    )
    p.add_argument("--gt", required=True, help="ground-truth annotations, e.g. instances_val2017.json")
    p.add_argument("--dets", required=True, help="results: a JSON list of {image_id, category_id, bbox, score}")
    p.add_argument("--json", action="store_true", help="end with one JSON line of AP, AP50, AP75, APs, APm, APl")
    args = p.parse_args(argv)
    from ..detection.evaluation import eval_coco_command

    return command(eval_coco_command)(args)


def visualize_main(argv: Sequence[str] | None = None) -> int:
    """tools/visualize_coco.py: ground truth and detections drawn on COCO images."""
    p = a.parser(
        "visualize_coco",
        "Draw ground-truth boxes (green, dashed, class names) and detections (red, 'name score') on COCO images,\n"
        "one PNG per image in --out.",
        "example: python tools/visualize_coco.py --gt GT.json --dets DETS.json --image-dir val2017 --out vis/",
    )
    p.add_argument("--gt", required=True, help="ground-truth annotations, e.g. instances_val2017.json")
    p.add_argument("--dets", required=True, help="results: a JSON list of {image_id, category_id, bbox, score}")
    p.add_argument("--image-dir", required=True, help="folder of the images (the GT's file_name is under it)")
    p.add_argument("--out", required=True, help="output folder for the PNG files")
    p.add_argument("--score-threshold", type=float, default=0.5, help="hide detections below it")
    p.add_argument("--max-images", type=int, default=20, help="draw at most this many images")
    p.add_argument("--image-ids", type=int, nargs="+", default=None, help="these images (default: the GT's)")
    args = p.parse_args(argv)
    from ..detection.visualize import visualize_command

    return command(visualize_command)(args)


def fault_inject_main(argv: Sequence[str] | None = None) -> int:
    """tools/fault_inject.py: kill -9 short runs at random moments, resume them, compare with uninterrupted runs."""
    p = a.parser(
        "fault_inject",
        "For each task (CIFAR, COCO detection, Places365; generated data), train a short run once, then again\n"
        "killing it with SIGKILL at random moments and resuming it with --resume; the final weights must equal\n"
        "the uninterrupted run's exactly. Exit status 1 on any difference.",
        "example: python tools/fault_inject.py --tasks cifar --trials 2",
    )
    p.add_argument("--tasks", nargs="+", choices=("cifar", "detection", "places"), default=["cifar", "detection",
                   "places"], help="which tasks to run")  # fmt: skip
    p.add_argument("--trials", type=int, default=5, help="kill -9 + resume cycles per task")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--work-dir", type=Path, default=None, help="where runs and data go (default: a temporary folder)")
    a.add_json(p)
    args = p.parse_args(argv)
    from ..faults import fault_inject_command

    return command(fault_inject_command)(args)


def train_net_d2_main(argv: Sequence[str] | None = None) -> int:
    """tools/train_net_d2.py: detectron2's train_net contract (its own parser; needs detectron2)."""
    from ..detection.d2_train import train_net_d2_main as main

    return main(argv)
