"""Command-line entry points; ``tools/*.py`` and the ``se-*`` console scripts are thin wrappers around these."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
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


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def complexity_main(argv: Sequence[str] | None = None) -> int:
    """Print parameters and multiply-adds of one model, or a Table-2-style table of several."""
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
    print(_format_table(headers, table))
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
