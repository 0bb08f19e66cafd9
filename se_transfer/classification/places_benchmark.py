"""Does Places365 loading keep up with training? Input-pipeline images/s per worker count vs. a model's training step.

The input pipeline is read + JPEG decode + training augmentation (random resized crop 224 + flip, normalisation)
through a DataLoader (``se_transfer.data.build.benchmark_input_pipeline``); the model step is forward +
backward + SGD step of ``create_model(model, num_classes=365)`` on random 224 x 224 inputs on the device. Both are
per process, i.e. per rank: with several GPUs on one host each rank runs its own workers on a share of the cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..benchmark import device_name, make_step, sync_device, time_iters
from ..data.build import benchmark_input_pipeline
from ..data.demo import write_fake_places365
from ..data.places365 import PLACES365_NUM_CLASSES, Places365
from ..data.transforms import ClassificationTransform
from ..engine.events import format_table
from ..models import create_model


def benchmark_model_step(
    model_name: str,
    batch_size: int,
    device: torch.device,
    steps: int = 5,
    warmup: int = 2,
    amp: str = "none",
    channels_last: bool = False,
    size: int = 224,
) -> dict[str, Any]:
    """Images/s of one training step (forward, backward, SGD) of ``model_name`` with 365 classes on random inputs.

    Each of ``steps`` timed steps (after ``warmup`` untimed ones) is timed on its own; the median is reported.
    """
    if batch_size <= 0 or steps <= 0 or warmup < 0:
        raise ValueError(f"need batch_size > 0, steps > 0, warmup >= 0; got {batch_size}, {steps}, {warmup}")
    model = create_model(model_name, num_classes=PLACES365_NUM_CLASSES)
    step = make_step(model, "train", device, batch_size, size, PLACES365_NUM_CLASSES, amp, channels_last, None)
    for _ in range(warmup):
        step()
    sync_device(device)
    times = [time_iters(step, device, 1) for _ in range(steps)]
    median = statistics.median(times)
    return {
        "model": model_name,
        "batch_size": batch_size,
        "amp": amp,
        "channels_last": channels_last,
        "ms_per_step": 1000.0 * median,
        "images_per_sec": batch_size / median,
    }


def benchmark_places_command(args: Any) -> int:
    """The body of tools/benchmark_places_input.py on its parsed arguments (see se_transfer.cli.tools)."""
    if args.root is not None and not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root: Places365 root not found: {args.root}")
    device = torch.device(args.device)
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")

    with contextlib.ExitStack() as stack:
        if args.root is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fake_places365_")))
            num_classes = min(100, max(1, args.fake_images))
            per_class = max(1, round(args.fake_images / num_classes))
            print(f"writing a fake Places365 tree of {num_classes * per_class} 256 x 341 JPEGs to {tmp} ...")
            root = write_fake_places365(
                tmp,
                num_classes=num_classes,
                per_class_train=per_class,
                per_class_val=1,
                image_size=(256, 341),
                small=not args.large,
                split_sets=(args.split,),
            )
            expected_classes: int | None = None
        else:
            root, expected_classes = Path(args.root), PLACES365_NUM_CLASSES
        dataset = Places365(
            root,
            args.split,
            small=not args.large,
            transform=ClassificationTransform(train=True),
            num_classes=expected_classes,
        )
        pipeline = []
        for w in args.workers:
            r = benchmark_input_pipeline(dataset, args.batch_size, w, args.batches)
            pipeline.append(r)
            print(f"  workers {w}: {r['images_per_sec']:.0f} images/s")

    model_result = None
    if args.model.lower() != "none":
        model_result = benchmark_model_step(
            args.model,
            args.model_batch,
            device,
            steps=args.model_iters,
            warmup=args.model_warmup,
            amp=amp,
            channels_last=args.channels_last,
        )
    need = model_result["images_per_sec"] if model_result else None
    for r in pipeline:
        r["keeps_up"] = None if need is None else r["images_per_sec"] >= need

    print(
        f"Places365 input pipeline ({args.split}, {'large' if args.large else '256'} folder, {len(dataset)} images, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs) vs training step on {device_name(device)}"
    )
    rows = [
        [
            f"input, {r['num_workers']} workers",
            f"{r['images_per_sec']:.0f}",
            f"{r['ms_per_batch']:.1f} ms/batch",
            "-" if r["keeps_up"] is None else ("yes" if r["keeps_up"] else "no"),
        ]
        for r in pipeline
    ]
    if model_result:
        rows.append(
            [
                f"train step {args.model}",
                f"{model_result['images_per_sec']:.0f}",
                f"{model_result['ms_per_step']:.1f} ms/step",
                "",
            ]
        )
    print(format_table(["", "images/s", "time", "keeps up"], rows))
    if model_result:
        ok = [r["num_workers"] for r in pipeline if r["keeps_up"]]
        if ok:
            print(f"loading keeps up with {min(ok)} or more workers (of those tried)")
        else:
            print(f"loading does NOT keep up with any worker count tried ({need:.0f} images/s needed)")
    if args.json:
        out = {
            "device": device_name(device),
            "split": args.split,
            "images": len(dataset),
            "pipeline": pipeline,
            "model": model_result,
        }
        print(json.dumps(out))
    return 0
