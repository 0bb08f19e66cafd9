"""CIFAR-10/100 classification: build model and data from a config, train with the engine, evaluate top-1/top-5."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import CfgNode, config_key
from ..data.build import per_rank_batch, resumable_batches
from ..data.cifar import CIFAR_MEAN, CIFAR_STD, CifarData, CifarInput, CifarLoader, load_cifar
from ..data.demo import write_fake_cifar
from ..engine import default_setup, get_rank, get_world_size, is_main_process
from ..engine.amp import amp_dtype, autocast
from ..engine.distributed import synchronize
from ..engine.events import progress
from ..engine.runner import evaluate_only
from ..engine.summary import print_summary, summary_rows
from .metrics import TopkCounts, accuracy_rows
from .model import EvalSetup, build_classifier, check_trained_head, train_classifier, trained_classifier

logger = logging.getLogger(__name__)

# Test error (%) of the paper's Tables 4 and 5, by (model, data set).
PAPER_ERRORS = {
    ("resnet110", "cifar10"): 6.37,
    ("se_resnet110", "cifar10"): 5.21,
    ("resnet110", "cifar100"): 26.88,
    ("se_resnet110", "cifar100"): 23.85,
    ("preact_resnet164", "cifar10"): 5.46,
    ("se_preact_resnet164", "cifar10"): 4.39,
    ("preact_resnet164", "cifar100"): 24.33,
    ("se_preact_resnet164", "cifar100"): 21.31,
    ("wrn16_8", "cifar10"): 4.27,
    ("se_wrn16_8", "cifar10"): 3.88,
    ("wrn16_8", "cifar100"): 20.43,
    ("se_wrn16_8", "cifar100"): 19.14,
    ("shake_shake26_2x96d", "cifar10"): 2.56,
    ("se_shake_shake26_2x96d", "cifar10"): 2.12,
    ("shake_even29_2x4x64d", "cifar100"): 15.85,
    ("se_shake_even29_2x4x64d", "cifar100"): 15.41,
}


def load_data(cfg: CfgNode, splits: tuple[str, ...] = ("train", "test")) -> tuple[CifarData, ...]:
    """The ``splits`` of DATA.DATASET under DATA.ROOT (generated first if DATA.GENERATE_DEMO)."""
    root = Path(cfg.DATA.ROOT)
    if cfg.DATA.GENERATE_DEMO and is_main_process():
        folder = root / ("cifar-10-batches-py" if cfg.DATA.DATASET == "cifar10" else "cifar-100-python")
        if not folder.is_dir():
            logger.info("DATA.GENERATE_DEMO: writing a generated %s set to %s", cfg.DATA.DATASET, root)
            write_fake_cifar(root, cfg.DATA.DATASET, seed=cfg.SEED)
    synchronize()
    with config_key("DATA.ROOT", root):
        return tuple(load_cifar(root, cfg.DATA.DATASET, split) for split in splits)


def _loader(cfg: CfgNode, data: CifarData, train: bool, device: torch.device) -> CifarLoader:
    key = "SOLVER.IMS_PER_BATCH" if train else "TEST.IMS_PER_BATCH"
    world = get_world_size()
    inputs = CifarInput(
        mean=CIFAR_MEAN[cfg.DATA.DATASET],
        std=CIFAR_STD[cfg.DATA.DATASET],
        cutout=cfg.DATA.CUTOUT if train else 0,
        channels_last=cfg.MODEL.CHANNELS_LAST,
    )
    batch = per_rank_batch(key, cfg.SOLVER.IMS_PER_BATCH if train else cfg.TEST.IMS_PER_BATCH, world)
    return CifarLoader(data, batch, train, device, seed=cfg.SEED, rank=get_rank(), world_size=world, inputs=inputs)


@torch.no_grad()
def evaluate(model: nn.Module, loader: CifarLoader, dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy and error (%) over the whole loader, summed over all processes."""
    was_training = model.training
    model.eval()
    counts = TopkCounts()
    for images, labels in progress(loader.epoch_iter(0), total=len(loader), desc="evaluating"):
        with autocast(images.device.type, dtype):
            logits = model(images)
        counts.add(logits, labels)
    model.train(was_training)
    return counts.results(loader.device)


def run(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, allow_config_change: bool = False
) -> dict[str, Any]:
    """Train (or with ``eval_only`` just evaluate) a CIFAR classifier as ``cfg`` says; return the final metrics."""
    cfg, device = default_setup(cfg, resume and not eval_only, allow_config_change)
    train_set, test_set = load_data(cfg)
    with config_key("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
        model = build_classifier(cfg, train_set.num_classes).to(device)
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    amp = amp_dtype(cfg.SOLVER.AMP)
    test_loader = _loader(cfg, test_set, False, device)

    if eval_only:
        check_trained_head(cfg, model)
        results = evaluate_only(cfg.OUTPUT_DIR, lambda: evaluate(model, test_loader, amp))
        _print_summary(cfg, results, eval_only=True)
        return results

    train_loader = _loader(cfg, train_set, True, device)
    results = train_classifier(
        cfg,
        model,
        lambda start: resumable_batches(train_loader, start),
        lambda: evaluate(model, test_loader, amp),
        device,
        len(train_loader),
        resume,
    )
    _print_summary(cfg, results, eval_only=False)
    return results


def eval_setup(cfg: CfgNode, device: torch.device) -> EvalSetup:
    """The trained model of MODEL.WEIGHTS and this rank's share of the test split (after ``default_setup``)."""
    (test_set,) = load_data(cfg, ("test",))
    model = trained_classifier(cfg, test_set.num_classes, device, normalize_input=False)
    loader = _loader(cfg, test_set, False, device)
    batches = functools.partial(loader.epoch_iter, 0)
    return EvalSetup(model, batches, len(loader), loader.batch_size, test_set.classes, amp_dtype(cfg.SOLVER.AMP))


def _print_summary(cfg: CfgNode, results: dict[str, Any], eval_only: bool) -> None:
    paper = PAPER_ERRORS.get((cfg.MODEL.ARCH, cfg.DATA.DATASET))
    metrics = [
        *accuracy_rows(results),
        ("paper top-1 error (%)", f"{paper:.2f} (Tables 4, 5; the full recipe on the real set)" if paper else "-"),
    ]
    data = f"{cfg.DATA.DATASET} at {cfg.DATA.ROOT} ({results.get('num_images', '?')} test images)"
    rows = summary_rows(cfg, results, data=data, metrics=metrics, eval_only=eval_only)
    print_summary(f"\n{cfg.MODEL.ARCH} on {cfg.DATA.DATASET}", rows)
    if not math.isfinite(results["top1"]):  # pragma: no cover - evaluate returns finite numbers
        raise RuntimeError("evaluation produced a non-finite accuracy")
