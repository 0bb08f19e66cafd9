"""The training run every task shares: solver, trainer, checkpointer, resume, records, hooks, plots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import CfgNode
from .checkpoint import Checkpointer
from .distributed import is_main_process
from .events import MetricsWriter, plot_metrics
from .solver import build_lr_scheduler, build_optimizer
from .trainer import CheckpointHook, EvalHook, LoggingHook, LossFn, LRSchedulerHook, Trainer

logger = logging.getLogger(__name__)


@dataclass
class CheckpointContent:
    """What a task's checkpoints carry beside the tensors (e.g. the architecture, so that the file rebuilds its model)
    and how a checkpoint is checked against the model on resume (``check_fit(model_state, state, path, what)``,
    raising ValueError with an explanation)."""

    meta: dict[str, Any] = field(default_factory=dict)
    check_fit: Callable[..., None] | None = None


@dataclass
class TrainingTask:
    """What a task hands the engine to train its model: ``batches(start_iter)`` (a resumable iterator of batches),
    ``loss_fn(model, batch)`` (a dict of loss terms), ``eval_fn()`` (a dict of metrics), what its checkpoints carry
    (``checkpoint``; default: nothing more, and tensor names and shapes compared on resume) and which parameters are
    its head (``is_head(name)``: trained at SOLVER.BASE_LR while the rest takes SOLVER.BACKBONE_LR_MULTIPLIER
    times it; default: every parameter)."""

    batches: Callable[[int], Iterator[Any]]
    loss_fn: LossFn
    eval_fn: Callable[[], dict[str, float]]
    checkpoint: CheckpointContent | None = None
    is_head: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class Schedule:
    """How long a run is, in iterations: its length ``max_iter`` (the LR schedule's), where it stops (``stop_iter``,
    at most max_iter), the LR milestones ``steps``, and ``iters_per_epoch`` (for the log; 0: not epoch-based)."""

    max_iter: int
    stop_iter: int
    steps: Sequence[int]
    iters_per_epoch: int = 0


def run_training(
    cfg: CfgNode,
    model: nn.Module,
    task: TrainingTask,
    schedule: Schedule,
    device: torch.device,
    resume: bool = False,
) -> tuple[Trainer, dict[str, Any]]:
    """Train ``model`` (wrapped by DDP / compile as ``wrap_for_training`` says) on ``task`` for ``schedule``, as
    cfg.SOLVER says; evaluate at the end.

    Returns the trainer and the final results: the last evaluation plus train_time_s, iterations and plots.
    """
    max_iter, stop_iter, steps = schedule.max_iter, schedule.stop_iter, schedule.steps
    checkpoint, is_head = task.checkpoint, task.is_head
    s = cfg.SOLVER
    _check_milestones(cfg, steps, max_iter)
    optimizer = build_optimizer(
        model, s.OPTIMIZER, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.NESTEROV, s.BACKBONE_LR_MULTIPLIER, is_head
    )
    scheduler = build_lr_scheduler(
        optimizer,
        max_iter=max_iter,
        scheduler=s.LR_SCHEDULER,
        steps=list(steps),
        gamma=s.GAMMA,
        warmup_iters=s.WARMUP_ITERS,
        warmup_factor=s.WARMUP_FACTOR,
    )
    trainer = Trainer(
        wrap_for_training(cfg, model, device),
        optimizer,
        batches=task.batches,
        loss_fn=task.loss_fn,
        max_iter=max_iter,
        stop_iter=stop_iter,
        amp=s.AMP,
        clip_grad_norm=s.CLIP_GRAD_NORM,
        device=device,
    )
    checkpointer = Checkpointer(
        cfg.OUTPUT_DIR, model, keep=s.CHECKPOINT_KEEP, optimizer=optimizer, scheduler=scheduler, scaler=trainer.scaler
    )
    if checkpoint is not None:
        checkpointer.extra_meta = dict(checkpoint.meta)
        if checkpoint.check_fit is not None:
            checkpointer.check_fit = checkpoint.check_fit
    start_iter = resume_with_current_solver(checkpointer, optimizer, scheduler) if resume else 0
    # A resumed run rewrites what came after its checkpoint; a fresh run starts a fresh file.
    writer = MetricsWriter(cfg.OUTPUT_DIR, start_iter) if is_main_process() else None
    trainer.register_hooks(
        [
            LRSchedulerHook(scheduler),
            LoggingHook(cfg.LOG_PERIOD, writer, schedule.iters_per_epoch, ims_per_batch=s.IMS_PER_BATCH),
            CheckpointHook(checkpointer, s.CHECKPOINT_PERIOD),
            EvalHook(cfg.TEST.EVAL_PERIOD, task.eval_fn, writer),
        ]
    )
    t0 = time.perf_counter()
    try:
        trainer.train(start_iter)
    finally:
        if writer is not None:
            writer.close()
    results: dict[str, Any] = dict(trainer.last_eval)
    eval_time = trainer.eval_time
    results["train_time_s"] = time.perf_counter() - t0 - eval_time
    results["eval_time_s"] = eval_time
    results["iterations"] = trainer.iter
    results["start_iter"] = start_iter
    if is_main_process():
        metrics = Path(cfg.OUTPUT_DIR) / "metrics.jsonl"
        results["plots"] = [str(p) for p in plot_metrics(metrics, cfg.OUTPUT_DIR, title=run_title(cfg))]
    return trainer, results


def run_title(cfg: CfgNode) -> str:
    """'se_resnet20 on cifar10': the model and training data of a run, for plots and summaries."""
    data = ", ".join(cfg.DATASETS.TRAIN) if cfg.TASK == "detection" else cfg.DATA.DATASET
    return f"{cfg.MODEL.ARCH} on {data}"


def _check_milestones(cfg: CfgNode, steps: Sequence[int], max_iter: int) -> None:
    """Warn about SOLVER.STEPS milestones the schedule never reaches (they would pass without a word)."""
    if cfg.SOLVER.LR_SCHEDULER != "multistep":
        return
    late = [int(x) for x in steps if x >= max_iter]
    if late:
        unit = f"epochs {list(cfg.SOLVER.STEPS)} = iterations {list(steps)}" if cfg.SOLVER.EPOCHS > 0 else list(steps)
        logger.warning(
            "SOLVER.STEPS %s: milestone(s) %s are at or past the end of the schedule (%d iterations) and never lower "
            "the learning rate; shorten SOLVER.STEPS with SOLVER.MAX_ITER / EPOCHS",
            unit,
            late,
            max_iter,
        )


def resume_with_current_solver(checkpointer: Checkpointer, optimizer: Any, scheduler: Any) -> int:
    """Restore the newest checkpoint, then put back the optimizer hyper-parameters and base LRs of the config in force
    (loading restores the saved ones): unchanged values are the same numbers, changed ones (--allow-config-change)
    take effect. The LR of the next step is recomputed from the schedule, as LambdaLR would."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)
    start_iter = checkpointer.resume()
    if start_iter == 0:
        return 0
    scheduler.base_lrs = base_lrs
    for group, saved, base, fn in zip(optimizer.param_groups, hyper, base_lrs, scheduler.lr_lambdas):
        group.update({k: v for k, v in saved.items() if k not in ("lr", "initial_lr")})
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return start_iter


def evaluate_only(output_dir: str, evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An --eval-only run's evaluation: ``evaluate()`` timed (``eval_time_s``) and recorded in metrics.jsonl."""
    start = time.perf_counter()
    results = evaluate()
    if results:  # the main process's (other ranks may get none)
        results["eval_time_s"] = time.perf_counter() - start
    record_evaluation(output_dir, results)
    return results


def record_evaluation(output_dir: str, results: dict[str, Any]) -> None:
    """Append the results of an --eval-only run to OUTPUT_DIR/metrics.jsonl (main process only)."""
    if is_main_process():
        writer = MetricsWriter(output_dir, start_iter=None)
        writer.write({"iteration": 0, "eval_only": True, **results})
        writer.close()


def wrap_for_training(cfg: CfgNode, model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the model when several processes train, then torch.compile when MODEL.COMPILE asks for it."""
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import get_world_size

    train_model: nn.Module = model
    if get_world_size() > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.MODEL.COMPILE:
        train_model = torch.compile(train_model, mode=None if cfg.MODEL.COMPILE == "default" else cfg.MODEL.COMPILE)
    return train_model


def schedule_from_cfg(cfg: CfgNode, iters_per_epoch: int) -> Schedule:
    """The run's :class:`Schedule` from SOLVER.EPOCHS (with ``iters_per_epoch``) or SOLVER.MAX_ITER, and STEPS."""
    s = cfg.SOLVER
    if s.EPOCHS > 0:
        max_iter = s.EPOCHS * iters_per_epoch
        steps = [int(round(e * iters_per_epoch)) for e in s.STEPS]
        stop = min(max_iter, s.MAX_ITER) if s.MAX_ITER > 0 else max_iter
    elif s.MAX_ITER > 0:
        max_iter = stop = s.MAX_ITER
        steps = [int(x) for x in s.STEPS]
    else:
        raise ValueError("set SOLVER.EPOCHS or SOLVER.MAX_ITER to a positive number")
    return Schedule(max_iter, stop, steps, iters_per_epoch)
