"""What every run does first: output folder, logging, merged config on disk, seeds, device, process group."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import CfgNode, flatten
from ..io import atomic_write_text
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


# Keys a resumed run may change freely: where things are, how often to log, save and evaluate, how to compute. Every
# other key shapes the training state the checkpoint restores (model, data, solver, schedule).
RESUME_FREE_KEYS = (
    "OUTPUT_DIR",
    "LOG_PERIOD",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "MODEL.COMPILE",
    "MODEL.SE_IMPL",
    "MODEL.CHANNELS_LAST",
    "DATA.ROOT",
    "DATA.GENERATE_DEMO",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.CHECKPOINT_KEEP",
    "TEST.",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE",
)


def config_changes(old: Any, new: CfgNode) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, the new value) for every key outside RESUME_FREE_KEYS that differs."""
    a = flatten(old)
    b = flatten(yaml.safe_load(new.dump()))  # the same YAML round trip config.yaml went through
    changed = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_FREE_KEYS):
            continue
        if a.get(key) != b.get(key):
            changed.append((key, a.get(key), b.get(key)))
    return changed


def check_resume_config(cfg: CfgNode, out: Path, allow_change: bool) -> None:
    """On --resume, the config must be the one the run started with (OUTPUT_DIR/config.yaml), or the change meant."""
    from ..config import ConfigError

    path = out / "config.yaml"
    if not (out / "last_checkpoint").is_file() or not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        changes = config_changes(yaml.safe_load(f) or {}, cfg)
    if not changes:
        return
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:10])
    if len(changes) > 10:
        shown += f"; ... ({len(changes)} keys in all)"
    if not allow_change:
        raise ConfigError(
            f"--resume: the config differs from the one this run started with ({path}) in keys that the checkpoint's "
            f"state would override or that shape the run: {shown}. Resume with the same config, or add "
            "--allow-config-change to apply the new values"
        )
    logger.warning("--resume --allow-config-change: applying %s", shown)


def warn_if_busy(load: float | None = None, cores: int | None = None) -> bool:
    """Warn when other work already keeps the CPUs busy (1-minute load average above the core count): times and the
    ETA will be longer than on an idle machine. Returns whether it warned."""
    try:
        load = os.getloadavg()[0] if load is None else load
    except OSError:  # not available on this platform
        return False
    cores = cores or os.cpu_count() or 1
    if load <= cores:
        return False
    logger.warning(
        "this machine is busy: load average %.1f on %d CPU cores before the run starts; expect times (and the ETA) "
        "about %.1fx those of an idle machine",
        load,
        cores,
        load / cores,
    )
    return True


def default_setup(
    cfg: CfgNode, resume: bool = False, allow_config_change: bool = False
) -> tuple[CfgNode, torch.device]:
    """Join torchrun's group if any; scale the solver if asked; make OUTPUT_DIR, log, write config.yaml, seed.

    With ``resume``, the config is first compared with the run's config.yaml (``check_resume_config``).
    Returns the config in force (scaled by the linear rule when SOLVER.REFERENCE_WORLD_SIZE asks) and the device.
    """
    if launched_by_torchrun():
        init_from_env("cuda" if cfg.MODEL.DEVICE != "cpu" and torch.cuda.is_available() else "cpu")
    rank = get_rank()
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(out, rank)
    cfg = apply_linear_scaling(cfg, get_world_size())
    if resume:  # every rank reads the same files and so reaches the same verdict
        check_resume_config(cfg, out, allow_config_change)
    if rank == 0:
        atomic_write_text(out / "config.yaml", cfg.dump())
        warn_if_busy()
    logger.info("rank %d of %d; config written to %s", rank, get_world_size(), out / "config.yaml")
    seed_all(cfg.SEED + rank)
    return cfg, resolve_device(cfg.MODEL.DEVICE)
