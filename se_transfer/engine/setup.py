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


def apply_linear_scaling(cfg: CfgNode, world_size: int) -> CfgNode:
    """detectron2's linear scaling rule, when SOLVER.REFERENCE_WORLD_SIZE is set and differs from ``world_size``."""
    ref = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref <= 0 or ref == world_size:
        return cfg
    factor = world_size / ref
    bs = int(round(cfg.SOLVER.IMS_PER_BATCH * factor))
    if bs < 1 or abs(bs - cfg.SOLVER.IMS_PER_BATCH * factor) > 1e-6:
        raise ValueError(
            f"SOLVER.REFERENCE_WORLD_SIZE {ref}: IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} cannot be scaled to "
            f"{world_size} processes by a whole number of images"
        )
    new = cfg.clone()
    new.defrost()
    s = new.SOLVER
    s.IMS_PER_BATCH = bs
    s.BASE_LR = cfg.SOLVER.BASE_LR * factor
    s.MAX_ITER = int(round(cfg.SOLVER.MAX_ITER / factor))
    if s.EPOCHS == 0:  # epoch-based schedules are already independent of the batch size in iterations
        s.STEPS = tuple(int(round(x / factor)) for x in cfg.SOLVER.STEPS)
    s.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS / factor))
    s.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / factor))
    new.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / factor))
    s.REFERENCE_WORLD_SIZE = world_size
    new.freeze()
    logger.warning(
        "linear scaling rule (SOLVER.REFERENCE_WORLD_SIZE %d -> %d processes): IMS_PER_BATCH %d, BASE_LR %g, "
        "MAX_ITER %d, STEPS %s, WARMUP_ITERS %d",
        ref, world_size, s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS,
    )  # fmt: skip
    return new


def default_setup(cfg: CfgNode) -> tuple[CfgNode, torch.device]:
    """Join torchrun's group if any; scale the solver if asked; make OUTPUT_DIR, log, write config.yaml, seed.

    Returns the config in force (scaled by the linear rule when SOLVER.REFERENCE_WORLD_SIZE asks) and the device.
    """
    if launched_by_torchrun():
        init_from_env("cuda" if cfg.MODEL.DEVICE != "cpu" and torch.cuda.is_available() else "cpu")
    rank = get_rank()
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(out, rank)
    cfg = apply_linear_scaling(cfg, get_world_size())
    if rank == 0:
        tmp = out / ".config.yaml.tmp"
        tmp.write_text(cfg.dump())
        os.replace(tmp, out / "config.yaml")
    logger.info("rank %d of %d; config written to %s", rank, get_world_size(), out / "config.yaml")
    seed_all(cfg.SEED + rank)
    return cfg, resolve_device(cfg.MODEL.DEVICE)
