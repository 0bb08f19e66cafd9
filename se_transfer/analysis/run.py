"""The jobs of tools/analyze_excitation.py and tools/ablate_se.py: each process of a launch runs one over its share
of a trained classifier's evaluation split (CIFAR test set, Places365 val), and rank 0 writes and prints."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..classification.metrics import TopkCounts
from ..classification.model import EvalSetup
from ..config import CfgNode, ConfigError
from ..engine import default_setup, get_rank, get_world_size, is_main_process
from ..engine.amp import autocast
from ..engine.events import format_table, progress
from ..io import atomic_write_text
from ..tasks import TASK_REGISTRY, task_name
from .excitation import (
    ExcitationRecorder,
    ExcitationStats,
    blocks_of_stages,
    pick_blocks,
    se_blocks,
    se_switched_off,
)
from .report import stage_table, write_report


@dataclass(frozen=True)
class AnalysisOptions:
    """What tools/analyze_excitation.py was asked for (see its --help)."""

    blocks: tuple[str, ...] = ()  # blocks to plot (default: the paper's choice, see pick_blocks)
    classes: tuple[str, ...] = ()  # classes to plot, by name or index (default: the 4 with most images)
    max_images: int = 0  # 0: the whole split
    image_folder: str = ""  # read this folder (one sub-folder per class) instead of the config's split


def eval_setup(cfg: CfgNode, image_folder: str = "") -> tuple[CfgNode, EvalSetup]:
    """``default_setup`` (logging into OUTPUT_DIR), then the trained model and the evaluation batches: the task's
    split, or the images of ``image_folder`` (``se_transfer.classification.imagefolder``)."""
    cfg, device = default_setup(cfg)
    if image_folder:
        from ..classification.imagefolder import eval_setup as folder_setup

        return cfg, folder_setup(cfg, device, image_folder)
    name = task_name(cfg)
    if name == "coco":
        raise ConfigError("TASK detection: the SE analysis tools read a classifier (a CIFAR or Places365 config)")
    setup = importlib.import_module(TASK_REGISTRY.get(name)).eval_setup(cfg, device)
    return cfg, setup


def _share(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_images: int):  # noqa: ANN202 - a generator
    """This rank's batches, cut so that all ranks together read at most ``max_images`` (0: all)."""
    world, rank = get_world_size(), get_rank()
    limit = max_images // world + (rank < max_images % world) if max_images else math.inf
    seen = 0
    for images, labels in batches:
        if seen >= limit:
            return
        take = int(min(len(labels), limit - seen))
        seen += take
        yield images[:take], labels[:take]


@torch.no_grad()
def evaluate(
    setup: EvalSetup,
    max_images: int = 0,
    desc: str = "evaluating",
    after_forward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Top-1/top-5 of ``setup.model`` over the split (at most ``max_images``), summed over processes (only the
    number of images when the labels are not the model's classes: ``setup.scored``); calls
    ``after_forward(labels)`` after each batch's forward."""
    counts = TopkCounts()
    total = setup.num_batches
    if max_images:
        total = min(total, math.ceil(math.ceil(max_images / get_world_size()) / setup.batch_size))
    for images, labels in progress(_share(setup.batches(), max_images), total=total, desc=desc):
        with autocast(images.device.type, setup.amp):
            logits = setup.model(images)
        if after_forward is not None:
            after_forward(labels)
        counts.add(logits, labels)
    if not setup.scored:
        return {"num_images": counts.totals(_device(setup))[2]}
    return counts.results(_device(setup))


def _device(setup: EvalSetup) -> torch.device:
    return next(setup.model.parameters()).device


def class_indices(names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """The classes ``wanted`` (a name, its last path part such as 'airfield' for '/a/airfield', or an index), as
    indices in the order asked; an error names the first unknown one."""
    short = {}
    for k, n in enumerate(names):
        short.setdefault(n.strip("/").split("/", 1)[-1] if n.startswith("/") else n, k)
    picked = []
    for w in wanted:
        if w in names:
            picked.append(names.index(w))
        elif w in short:
            picked.append(short[w])
        elif w.isdigit() and int(w) < len(names):
            picked.append(int(w))
        else:
            some = ", ".join(names[:5])
            raise ValueError(f"--classes {w!r}: no such class (a name such as {some}, ... or 0..{len(names) - 1})")
    return list(dict.fromkeys(picked))


def most_frequent(counts: torch.Tensor, n: int = 4) -> list[int]:
    """The ``n`` classes with the most images (ties: lower index; none without images), in index order."""
    order = sorted(range(len(counts)), key=lambda k: (-float(counts[k]), k))
    return sorted(k for k in order[:n] if counts[k] > 0)


def analyze_excitation(cfg: CfgNode, options: AnalysisOptions) -> dict[str, Any]:
    """Collect every SE block's gates over the split, then (rank 0) write the report and print the stage table."""
    cfg, setup = eval_setup(cfg, options.image_folder)
    blocks = se_blocks(setup.model)
    plot_blocks = pick_blocks(blocks, options.blocks)
    asked = class_indices(setup.classes, options.classes)  # checked before the pass, not after it
    stats = ExcitationStats(blocks, len(setup.classes), _device(setup))
    with ExcitationRecorder(setup.model) as recorder:
        accuracy = evaluate(setup, options.max_images, "excitations", lambda labels: stats.add(recorder.pop(), labels))
    stats.all_reduce()
    if not is_main_process():
        return {}
    plot_classes = asked or most_frequent(stats.counts)
    data = _data_name(cfg, options.image_folder)
    run = {"model": cfg.MODEL.ARCH, "weights": cfg.MODEL.WEIGHTS, "dataset": data, **accuracy}
    out = Path(cfg.OUTPUT_DIR)
    paths = write_report(stats, out, setup.classes, plot_blocks, plot_classes, run)
    top1 = f"top-1 {accuracy['top1']:.2f}%" if "top1" in accuracy else f"{len(setup.classes)} folder classes"
    print(f"\nExcitations of {cfg.MODEL.ARCH} ({len(blocks)} SE blocks) over {stats.num_images} images of {data} "
          f"({top1}):")  # fmt: skip
    print(stage_table(stats))
    print("class spread: std over classes of the class-mean gate (0 = class-agnostic); within-class std: over the "
          "images of a class; averaged over channels and blocks")  # fmt: skip
    more = ", ..." if len(paths) > 4 else ""
    print(f"wrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths[:4]) + more)
    return {"accuracy": accuracy, "files": [str(p) for p in paths]}


def parse_stage_sets(values: Sequence[str]) -> list[tuple[int, ...]]:
    """'5' -> (5,), '4,5' -> (4, 5): the --off settings of tools/ablate_se.py."""
    sets = []
    for v in values:
        try:
            stages = tuple(sorted({int(s) for s in v.split(",") if s.strip()}))
        except ValueError:
            raise ValueError(f"--off {v!r}: expected stage numbers such as 5 or 4,5") from None
        if not stages:
            raise ValueError(f"--off {v!r}: expected stage numbers such as 5 or 4,5")
        sets.append(stages)
    return sets


def _data_name(cfg: CfgNode, image_folder: str) -> str:
    return f"{image_folder} (image folder)" if image_folder else cfg.DATA.DATASET


def ablate_se(
    cfg: CfgNode, off: Sequence[tuple[int, ...]], max_images: int = 0, image_folder: str = ""
) -> dict[str, Any]:
    """Accuracy with every SE block, then with the SE blocks of each stage set in ``off`` switched off (gate = 1);
    default: each stage alone, then all of them. Rank 0 prints the table and writes ablation.json."""
    cfg, setup = eval_setup(cfg, image_folder)
    if not setup.scored:
        n = setup.model.fc.out_features
        raise ConfigError(
            f"--image-folder {image_folder} has {len(setup.classes)} class folders for a model of {n} outputs: "
            "accuracy needs one folder per output class, in the model's order (sorted names, as ImageNet's synset "
            "folders are)"
        )
    stages = sorted({b.stage for b in se_blocks(setup.model).values()})
    settings = list(off) or [(s,) for s in stages] + ([tuple(stages)] if len(stages) > 1 else [])
    for s in settings:  # every setting is checked before the first pass
        blocks_of_stages(setup.model, s)
    rows = [{"off": [], "blocks_off": [], **evaluate(setup, max_images, "all SE on")}]
    for s in settings:
        label = "SE off in stage " + ",".join(map(str, s))
        with se_switched_off(setup.model, s) as names:
            rows.append({"off": list(s), "blocks_off": names, **evaluate(setup, max_images, label)})
    if not is_main_process():
        return {}
    base = rows[0]
    cells = []
    for r in rows:
        name = "none (all SE on)" if not r["off"] else "stage " + ", ".join(map(str, r["off"]))
        r["delta_top1"], r["delta_top5"] = r["top1"] - base["top1"], r["top5"] - base["top5"]
        cells.append([name, str(len(r["blocks_off"])), f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                      f"{r['delta_top1']:+.2f}", f"{r['delta_top5']:+.2f}"])  # fmt: skip
    data = _data_name(cfg, image_folder)
    print(f"\n{cfg.MODEL.ARCH} on {data} ({base['num_images']} images): SE blocks switched off (gate = 1)")
    print(format_table(["SE off in", "blocks", "top-1 (%)", "top-5 (%)", "change top-1", "change top-5"], cells,
                       align="lrrrrr"))  # fmt: skip
    doc = {"model": cfg.MODEL.ARCH, "weights": cfg.MODEL.WEIGHTS, "dataset": data, "rows": rows}
    path = atomic_write_text(Path(cfg.OUTPUT_DIR) / "ablation.json", json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return doc
