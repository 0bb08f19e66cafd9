"""Build a classifier from a config: registry model, ImageNet weights (head re-initialised), frozen stages, norms."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from ..config import CfgNode, ConfigError, config_key
from ..engine.runner import CheckpointContent, TrainingTask, run_training, schedule_from_cfg
from ..models import create_model
from ..models.info import model_info, normalize_input
from ..models.registry import model_entry
from ..models.weights import check_fit, checkpoint_metadata

logger = logging.getLogger(__name__)


class EvalSetup(NamedTuple):
    """A trained classifier and the evaluation split, for the tools that read one (``se_transfer.analysis``)."""

    model: nn.Module  # in eval mode, on the device, taking the loader's images
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # this rank's (images, labels), on the device
    num_batches: int  # of this rank
    batch_size: int  # of this rank
    classes: list[str]
    amp: torch.dtype | None  # the autocast dtype evaluation runs in
    scored: bool = True  # whether the labels are the model's output classes (else accuracy means nothing)


def build_classifier(cfg: CfgNode, num_classes: int) -> nn.Module:
    """MODEL.ARCH with MODEL.KWARGS, MODEL.WEIGHTS (a head of another size is re-initialised), MODEL.BACKBONE.*."""
    entry = model_entry(cfg.MODEL.ARCH)
    kwargs = dict(cfg.MODEL.KWARGS)
    backbone = cfg.MODEL.BACKBONE
    if entry.family == "imagenet":
        kwargs.setdefault("freeze_at", backbone.FREEZE_AT)
        kwargs.setdefault("norm", backbone.NORM)
    elif backbone.FREEZE_AT or backbone.NORM != "BN":
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT / NORM apply to ImageNet-family models, not {cfg.MODEL.ARCH}")
    n = cfg.MODEL.NUM_CLASSES or num_classes
    return create_model(
        cfg.MODEL.ARCH, num_classes=n, pretrained=cfg.MODEL.WEIGHTS or None, se_impl=cfg.MODEL.SE_IMPL, **kwargs
    )


def trained_classifier(cfg: CfgNode, num_classes: int, device: torch.device, normalize_input: bool) -> nn.Module:
    """The classifier of MODEL.WEIGHTS for evaluation (the tools of ``se_transfer.analysis``): built, checked to hold a
    trained head, on the device, in eval mode, channels_last if MODEL.CHANNELS_LAST; with ``normalize_input`` it
    takes RGB in [0, 1] (``attach_input_normalization``)."""
    with config_key("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
        model = build_classifier(cfg, num_classes)
    check_trained_head(cfg, model)
    if normalize_input:
        attach_input_normalization(model)
    model = model.to(device)
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def on_device(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Iterator[tuple]:
    """(images, labels) batches moved to ``device``."""
    for images, labels in pairs:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def check_trained_head(cfg: CfgNode, model: nn.Module) -> None:
    """For --eval-only: refuse a model whose classifier was not trained for this task (no MODEL.WEIGHTS, or weights
    whose head was re-initialised: ImageNet's 1000 classes for 365 or 10), which would score chance and look like a
    result."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError(
            "--eval-only needs MODEL.WEIGHTS (e.g. OUTPUT_DIR/model_final.pth of a training run): without it a "
            f"randomly initialised {cfg.MODEL.ARCH} would be evaluated"
        )
    source = model_info(model).source
    if source is not None and not source.head_loaded:
        raise ConfigError(
            f"--eval-only: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} holds no classifier for these "
            f"{model.fc.out_features} classes (its head was re-initialised), so a random head would be evaluated; "
            "pass a checkpoint trained on this data set (OUTPUT_DIR/model_final.pth)"
        )


def train_classifier(
    cfg: CfgNode,
    model: nn.Module,
    batches: Callable[[int], Iterator[Any]],
    eval_fn: Callable[[], dict[str, float]],
    device: torch.device,
    iters_per_epoch: int,
    resume: bool,
) -> dict[str, Any]:
    """Train a classifier with cross-entropy on ``batches(start_iter)`` as cfg.SOLVER says (epochs or iterations),
    evaluating with ``eval_fn``; checkpoints carry the architecture, so model_final.pth rebuilds the model."""
    task = TrainingTask(
        batches,
        cross_entropy_loss,
        eval_fn,
        checkpoint=CheckpointContent(checkpoint_metadata(model), check_fit),
        is_head=is_classifier_head,
    )
    _, results = run_training(cfg, model, task, schedule_from_cfg(cfg, iters_per_epoch), device, resume)
    return results


def is_classifier_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to a classifier's head (``fc``), the part fine-tuning trains at full LR."""
    return name.startswith("fc.")


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classification training loss: cross-entropy of ``model(images)`` against the labels."""
    images, labels = batch
    return {"loss": nn.functional.cross_entropy(model(images), labels)}


def attach_input_normalization(model: nn.Module) -> nn.Module:
    """Make ``model`` take RGB images in [0, 1] and normalise them as its weights expect (``model.info.input_norm``).

    A forward pre-hook on the device, so the state dict is unchanged and BGR / 0..255 weights work too.
    """
    spec = dict(model_info(model).input_norm)

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (normalize_input(args[0], spec), *args[1:])

    model.register_forward_pre_hook(hook)
    return model
