"""The tasks ``tools/train_net.py`` runs, by name, each imported only when chosen.

A task is a module with ``run(cfg, eval_only, resume, allow_config_change) -> results``: it builds model and data
from the config, trains with ``engine.runner.run_training`` and prints the ``engine.summary``. ``task_for(cfg)``
picks one from ``TASK`` (and, for classification, ``DATA.DATASET``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .config import CfgNode, ConfigError
from .registry import Registry

TASK_REGISTRY = Registry("task")
TASK_REGISTRY.add("cifar", "se_transfer.classification.cifar")
TASK_REGISTRY.add("places365", "se_transfer.classification.places")
TASK_REGISTRY.add("coco", "se_transfer.detection.task")


def task_name(cfg: CfgNode) -> str:
    """The registered task a config runs: 'coco' (TASK detection), 'places365' or 'cifar' (TASK classification)."""
    if cfg.TASK == "detection":
        return "coco"
    if cfg.TASK == "classification":
        return "places365" if cfg.DATA.DATASET == "places365" else "cifar"
    raise ConfigError(f"TASK must be 'classification' or 'detection', got {cfg.TASK!r}")


def task_for(cfg: CfgNode) -> Callable[..., dict[str, Any]]:
    """The ``run`` function of the task ``cfg`` asks for."""
    return importlib.import_module(TASK_REGISTRY.get(task_name(cfg))).run
