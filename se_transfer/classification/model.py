"""Build a classifier from a config: registry model, ImageNet weights (head re-initialised), frozen stages, norms."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import CfgNode, ConfigError
from ..models import create_model
from ..models.factory import model_entry
from ..models.weights import IMAGENET_RGB, normalize_input

logger = logging.getLogger(__name__)


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


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classification training loss: cross-entropy of ``model(images)`` against the labels."""
    images, labels = batch
    return {"loss": nn.functional.cross_entropy(model(images), labels)}


def attach_input_normalization(model: nn.Module) -> nn.Module:
    """Make ``model`` take RGB images in [0, 1] and normalise them as its weights expect (``model.input_norm``).

    A forward pre-hook on the device, so the state dict is unchanged and BGR / 0..255 weights work too.
    """
    spec = dict(getattr(model, "input_norm", None) or IMAGENET_RGB)

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (normalize_input(args[0], spec), *args[1:])

    model.register_forward_pre_hook(hook)
    return model
