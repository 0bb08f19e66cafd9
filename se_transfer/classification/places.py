"""Places365 scene classification: fine-tuning from ImageNet weights (or training from scratch), top-1/top-5."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import CfgNode, ConfigError, config_key
from ..data.build import build_classification_loader, per_rank_batch, resumable_batches, workers_stopped_after
from ..data.demo import write_fake_places365
from ..data.places365 import Places365
from ..data.samplers import InferenceBatchSampler
from ..data.transforms import ClassificationTransform
from ..engine import default_setup, get_rank, get_world_size, is_main_process
from ..engine.distributed import all_gather_object, synchronize
from ..engine.events import progress
from ..engine.runner import evaluate_only
from ..engine.summary import print_summary, summary_rows
from ..io import atomic_write_text
from .metrics import accuracy_results, accuracy_rows
from .model import (
    EvalSetup,
    attach_input_normalization,
    build_classifier,
    check_trained_head,
    on_device,
    train_classifier,
    trained_classifier,
)

logger = logging.getLogger(__name__)

# Paper Table 6: single-crop top-1 / top-5 error (%) on the Places365 validation set, trained on Places365-Challenge.
PAPER_ERRORS = {"resnet152": (41.15, 11.61), "se_resnet152": (40.37, 11.01)}


class _Indexed(Dataset):
    """(image, label, index) of a data set, so evaluation can name every image."""

    def __init__(self, dataset: Places365) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i]
        return image, label, i


def _datasets(cfg: CfgNode, train: bool) -> Places365:
    root = Path(cfg.DATA.ROOT)
    if cfg.DATA.GENERATE_DEMO and is_main_process() and not (root / "categories_places365.txt").is_file():
        logger.info("DATA.GENERATE_DEMO: writing a generated Places365-format tree to %s", root)
        write_fake_places365(root, seed=cfg.SEED, small=cfg.DATA.SMALL)
    synchronize()
    # Images arrive as RGB in [0, 1]; the model normalises them as its weights expect (see attach_input_normalization).
    transform = ClassificationTransform(
        train=train,
        size=cfg.INPUT.CROP_SIZE,
        resize=cfg.INPUT.RESIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        ten_crop=cfg.TEST.TEN_CROP and not train,
    )
    split = cfg.DATA.TRAIN_SPLIT if train else "val"
    with config_key("DATA.ROOT", root):
        return Places365(
            root, split, small=cfg.DATA.SMALL, transform=transform, skip_missing=cfg.DATALOADER.SKIP_MISSING_IMAGES
        )


def _eval_loader(cfg: CfgNode, dataset: Places365) -> DataLoader:
    world, rank = get_world_size(), get_rank()
    sampler = InferenceBatchSampler(
        len(dataset), per_rank_batch("TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, world), rank, world
    )
    return DataLoader(
        _Indexed(dataset),
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, dataset: Places365, device: torch.device, output_dir: str | os.PathLike
) -> dict[str, float]:
    """Top-1/top-5 over every validation image (all processes); writes predictions and per-class accuracy (rank 0).

    Ten-crop batches (N x 10 x 3 x H x W) are scored by the mean of the crops' softmax.
    """
    was_training = model.training
    model.eval()
    rows = []
    for images, labels, idx in progress(loader, total=len(loader), desc="evaluating"):
        images = images.to(device, non_blocking=True)
        if images.ndim == 5:
            n, c = images.shape[:2]
            probs = model(images.flatten(0, 1)).float().softmax(1).view(n, c, -1).mean(1)
        else:
            probs = model(images).float().softmax(1)
        scores, top = probs.topk(min(5, probs.shape[1]), dim=1)
        for i, label, t, s in zip(idx.tolist(), labels.tolist(), top.cpu().tolist(), scores.cpu().tolist()):
            rows.append((i, label, t, s))
    model.train(was_training)
    gathered = [r for part in all_gather_object(rows) for r in part]
    if not is_main_process():
        return {}
    by_index = {r[0]: r for r in gathered}  # one row per image
    n = len(by_index)
    # counted over the rows gathered from every rank (one per image), which rank 0 also writes as predictions
    results = accuracy_results(
        sum(r[2][0] == r[1] for r in by_index.values()), sum(r[1] in r[2] for r in by_index.values()), n
    )
    _write_reports(by_index, dataset, Path(output_dir) / "inference")
    return results


def _write_reports(rows: dict[int, tuple], dataset: Places365, out: Path) -> None:
    """predictions.jsonl (image, label, top-5 classes and scores), per_class_accuracy.json, confused_pairs.png."""
    out.mkdir(parents=True, exist_ok=True)
    names = dataset.classes
    lines = []
    for i in sorted(rows):
        _, label, top, scores = rows[i]
        record = {"image": str(dataset.image_path(i)), "label": names[label]}
        record["top5"] = [{"class": names[c], "score": round(s, 5)} for c, s in zip(top, scores)]
        lines.append(json.dumps(record) + "\n")
    atomic_write_text(out / "predictions.jsonl", "".join(lines))
    correct: dict[int, list[int]] = {}
    confusions: dict[tuple[int, int], int] = {}
    for _, label, top, _ in rows.values():
        correct.setdefault(label, [0, 0])
        correct[label][0] += int(top[0] == label)
        correct[label][1] += 1
        if top[0] != label:
            confusions[(label, top[0])] = confusions.get((label, top[0]), 0) + 1
    per_class = {names[c]: {"top1": 100.0 * k / t, "images": t} for c, (k, t) in sorted(correct.items())}
    atomic_write_text(out / "per_class_accuracy.json", json.dumps(per_class, indent=1))
    _plot_confusions(confusions, names, out / "confused_pairs.png")


def _plot_confusions(confusions: dict[tuple[int, int], int], names: list[str], path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted(confusions.items(), key=lambda kv: -kv[1])[:top]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(pairs), 1) + 1.2))
    if pairs:
        labels = [f"{names[t]} -> {names[p]}" for (t, p), _ in pairs]
        ax.barh(range(len(pairs)), [c for _, c in pairs], color="tab:red")
        ax.set_yticks(range(len(pairs)), labels, fontsize=8)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center")
    ax.set_xlabel("validation images (true -> predicted)")
    ax.set_title(f"most confused category pairs (top {top})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, allow_config_change: bool = False
) -> dict[str, Any]:
    """Fine-tune (or train from scratch, or with ``eval_only`` evaluate) a Places365 classifier as ``cfg`` says."""
    cfg, device = default_setup(cfg, resume and not eval_only, allow_config_change)
    val_set = _datasets(cfg, train=False)
    if not cfg.MODEL.WEIGHTS:
        logger.warning(
            "MODEL.WEIGHTS is empty: %s starts from RANDOM initialisation (the paper's from-scratch setting). To "
            "fine-tune from ImageNet, pass the weights (any public layout) with MODEL.WEIGHTS",
            cfg.MODEL.ARCH,
        )
    with config_key("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
        model = attach_input_normalization(build_classifier(cfg, len(val_set.classes))).to(device)
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    val_loader = _eval_loader(cfg, val_set)
    paper = PAPER_ERRORS.get(cfg.MODEL.ARCH)

    if eval_only:
        check_trained_head(cfg, model)
        results = evaluate_only(cfg.OUTPUT_DIR, lambda: evaluate(model, val_loader, val_set, device, cfg.OUTPUT_DIR))
        if is_main_process():
            _print_summary(cfg, results, paper, eval_only=True)
        return results

    train_set = _datasets(cfg, train=True)
    if train_set.classes != val_set.classes:
        raise ValueError("the training and validation splits list different categories")
    world = get_world_size()
    train_loader = build_classification_loader(
        train_set,
        per_rank_batch("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH, world),
        True,
        cfg.DATALOADER.NUM_WORKERS,
        cfg.SEED,
        get_rank(),
        world,
    )

    def batches(start_iter: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in resumable_batches(train_loader, start_iter):
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def eval_fn() -> dict[str, float]:
        return evaluate(model, val_loader, val_set, device, cfg.OUTPUT_DIR)

    with workers_stopped_after(train_loader):
        results = train_classifier(cfg, model, batches, eval_fn, device, len(train_loader), resume)
    if is_main_process():
        _print_summary(cfg, results, paper, eval_only=False)
    return results


def eval_setup(cfg: CfgNode, device: torch.device) -> EvalSetup:
    """The trained model of MODEL.WEIGHTS and this rank's share of the single-crop validation split (after
    ``default_setup``)."""
    if cfg.TEST.TEN_CROP:
        raise ConfigError("TEST.TEN_CROP: this tool reads one centre crop per image; set TEST.TEN_CROP False")
    val_set = _datasets(cfg, train=False)
    model = trained_classifier(cfg, len(val_set.classes), device, normalize_input=True)
    loader = _eval_loader(cfg, val_set)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return on_device(((images, labels) for images, labels, _ in loader), device)

    return EvalSetup(model, batches, len(loader), loader.batch_sampler.batch_size, val_set.classes, None)


def _print_summary(cfg: CfgNode, results: dict[str, Any], paper: tuple[float, float] | None, eval_only: bool) -> None:
    metrics = [
        *accuracy_rows(results),
        ("paper top-1 / top-5 error (%)", f"{paper[0]:.2f} / {paper[1]:.2f} (Table 6)" if paper else "-"),
    ]
    crop = "10-crop" if cfg.TEST.TEN_CROP else "centre crop"
    data = f"Places365 val at {cfg.DATA.ROOT} ({results['num_images']} images, {crop})"
    inference = Path(cfg.OUTPUT_DIR).resolve() / "inference"
    files = [("predictions", inference / "predictions.jsonl"), ("per-class accuracy", inference /
             "per_class_accuracy.json"), ("most confused pairs", inference / "confused_pairs.png")]  # fmt: skip
    rows = summary_rows(cfg, results, data=data, metrics=metrics, files=files, eval_only=eval_only)
    print_summary(f"\n{cfg.MODEL.ARCH} on Places365", rows)
