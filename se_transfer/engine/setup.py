"""What every run does first: output folder, logging, merged config on disk, seeds, device, process group."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch

from ..config import CfgNode
from .distributed import get_rank, get_world_size, init_from_env, launched_by_torchrun
from .events import setup_logger

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """MODEL.DEVICE -> torch.device ('auto': this process's GPU when there is one, else the CPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"MODEL.DEVICE is {name!r} but no CUDA device is available; use MODEL.DEVICE cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def seed_all(seed: int) -> None:
    """Seed Python and torch (all devices) with ``seed``."""
    random.seed(seed)
    torch.manual_seed(seed)


def default_setup(cfg: CfgNode) -> torch.device:
    """Join torchrun's process group if any, make OUTPUT_DIR, log, write config.yaml (rank 0), seed, pick device."""
    if launched_by_torchrun():
        init_from_env("cuda" if cfg.MODEL.DEVICE != "cpu" and torch.cuda.is_available() else "cpu")
    rank = get_rank()
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(out, rank)
    if rank == 0:
        tmp = out / ".config.yaml.tmp"
        tmp.write_text(cfg.dump())
        os.replace(tmp, out / "config.yaml")
    logger.info("rank %d of %d; config written to %s", rank, get_world_size(), out / "config.yaml")
    seed_all(cfg.SEED + rank)
    return resolve_device(cfg.MODEL.DEVICE)
