"""A small iteration-based trainer: one ``run_step`` (forward, backward, clip, step) and hooks around it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .amp import amp_dtype, autocast
from .checkpoint import Checkpointer
from .distributed import is_main_process
from .events import MetricsWriter

logger = logging.getLogger(__name__)

Batch = Any
LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops and the last good checkpoint stays as it is."""


class HookBase:
    """Called by the trainer: before_train, after_step (``trainer.iter`` steps are done), after_train."""

    trainer: Trainer

    def before_train(self) -> None:
        """Before the first step."""

    def after_step(self) -> None:
        """After each step."""

    def after_train(self) -> None:
        """After the last step (also when training stops with an error: see ``trainer.failed``)."""


class Trainer:
    """Runs ``losses = loss_fn(model, batch)`` for iterations start_iter..stop_iter with the given hooks.

    The loss is checked for NaN/Inf without a device sync per step: a flag accumulates on the device and is read at
    each log period and before anything is saved, so no checkpoint ever holds weights past a non-finite loss.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Callable[[int], Iterator[Batch]],
        loss_fn: LossFn,
        max_iter: int,
        stop_iter: int | None = None,
        amp: str = "none",
        clip_grad_norm: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batches = batches
        self.loss_fn = loss_fn
        self.max_iter = max_iter
        self.stop_iter = min(stop_iter or max_iter, max_iter)
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.clip_grad_norm = clip_grad_norm
        self.hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.failed: BaseException | None = None
        self.last_losses: dict[str, torch.Tensor] = {}
        self.last_eval: dict[str, float] = {}
        self.eval_time = 0.0  # seconds spent in evaluations during training (not counted as training time)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._checked_iter = 0

    def register_hooks(self, hooks: list[HookBase | None]) -> None:
        """Add hooks (None entries are skipped); they run in the given order."""
        for h in hooks:
            if h is not None:
                h.trainer = self
                self.hooks.append(h)

    def _autocast(self) -> Any:
        return autocast(self.device.type, self.amp_dtype)

    def run_step(self, batch: Batch) -> None:
        """One optimisation step on ``batch``."""
        self.model.train()
        with self._autocast():
            losses = self.loss_fn(self.model, batch)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._nonfinite |= ~torch.isfinite(loss.detach())
        self.last_losses = {k: v.detach() for k, v in losses.items()}

    def check_finite(self) -> None:
        """Raise NonFiniteLossError if any loss since the last check was NaN or infinite."""
        if bool(self._nonfinite):
            values = {k: float(v) for k, v in self.last_losses.items()}
            raise NonFiniteLossError(
                f"non-finite loss between iterations {self._checked_iter + 1} and {self.iter} "
                f"(last losses: {values}); training stopped, checkpoints were written only before it"
            )
        self._checked_iter = self.iter

    def train(self, start_iter: int = 0) -> None:
        """Run iterations start_iter..stop_iter, calling the hooks."""
        self.start_iter = self.iter = start_iter
        logger.info("training from iteration %d to %d (schedule length %d)", start_iter, self.stop_iter, self.max_iter)
        try:
            for h in self.hooks:
                h.before_train()
            data = self.batches(start_iter)
            while self.iter < self.stop_iter:
                self.run_step(next(data))
                self.iter += 1
                for h in self.hooks:
                    h.after_step()
            self.check_finite()
        except BaseException as e:
            self.failed = e
            raise
        finally:
            for h in self.hooks:
                h.after_train()


class LRSchedulerHook(HookBase):
    """Steps the learning-rate schedule after every optimisation step (register it first, so that the hooks after it
    and the checkpoints see the LR of the next step)."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class CheckpointHook(HookBase):
    """Saves model_{iter}.pth every ``period`` iterations and model_final.pth at the end (only finite states)."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer = checkpointer
        self.period = period

    def _save(self, name: str) -> None:
        t = self.trainer
        t.check_finite()
        state = self.checkpointer.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLossError(
                f"weights or statistics became non-finite by iteration {t.iter} ({', '.join(bad[:5])}); "
                "not saving them, the last checkpoint is left as it was"
            )
        self.checkpointer.save(name, t.iter)

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.stop_iter:
            self._save(f"model_{t.iter:07d}")

    def after_train(self) -> None:
        t = self.trainer
        if t.failed is None and t.iter >= t.stop_iter:
            self._save("model_final")


class EvalHook(HookBase):
    """Runs ``eval_fn()`` every ``period`` iterations and once at the end; writes its metrics."""

    def __init__(self, period: int, eval_fn: Callable[[], dict[str, float]], writer: MetricsWriter | None) -> None:
        self.period = period
        self.eval_fn = eval_fn
        self.writer = writer

    def _evaluate(self) -> None:
        t = self.trainer
        t.check_finite()
        start = time.perf_counter()
        results = self.eval_fn()
        took = time.perf_counter() - start
        t.eval_time += took
        t.last_eval = results
        shown = ", ".join(f"{k} {v:.2f}" for k, v in results.items() if isinstance(v, float))
        logger.info("evaluation at iteration %d (%.1f s): %s", t.iter, took, shown)
        if self.writer is not None:
            self.writer.write({"iteration": t.iter, **results})

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.stop_iter:
            self._evaluate()

    def after_train(self) -> None:
        t = self.trainer
        if t.failed is None and t.iter >= t.stop_iter:
            self._evaluate()


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LoggingHook(HookBase):
    """Every ``period`` iterations: checks the loss is finite, writes loss/lr/throughput to metrics.jsonl, updates
    the progress bar and writes the same line to log.txt (iteration, losses, lr, images/s, ETA)."""

    def __init__(
        self, period: int, writer: MetricsWriter | None, iters_per_epoch: int = 0, ims_per_batch: int = 0
    ) -> None:
        self.period = max(1, period)
        self.writer = writer
        self.iters_per_epoch = iters_per_epoch
        self.ims_per_batch = ims_per_batch  # for images/s
        self.bar = None

    def before_train(self) -> None:
        t = self.trainer
        self._t0, self._it0, self._eval0 = time.perf_counter(), t.iter, t.eval_time
        self._loss_sum: torch.Tensor | None = None
        self._n = 0
        self.total_time = 0.0  # seconds of training steps so far (evaluations excluded)
        if is_main_process():
            from tqdm import tqdm

            self.bar = tqdm(total=t.stop_iter, initial=t.iter, unit="it", dynamic_ncols=True, mininterval=1.0)

    def after_step(self) -> None:
        t = self.trainer
        loss = sum(t.last_losses.values())
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._n += 1
        if t.iter % self.period and t.iter != t.stop_iter:
            return
        t.check_finite()
        now = time.perf_counter()
        elapsed = max(now - self._t0 - (t.eval_time - self._eval0), 1e-9)  # evaluations are not training time
        self.total_time += elapsed
        ims = self.ims_per_batch * (t.iter - self._it0) / max(elapsed, 1e-9)
        record = {
            "iteration": t.iter,
            "loss": float(self._loss_sum) / self._n,
            "lr": t.optimizer.param_groups[0]["lr"],
            "ims_per_sec": round(ims, 1),
            "time_per_iter": elapsed / max(1, t.iter - self._it0),
        }
        if len(t.last_losses) > 1:
            record.update({k: float(v) for k, v in t.last_losses.items()})
        if self.iters_per_epoch:
            record["epoch"] = round(t.iter / self.iters_per_epoch, 3)
        if self.writer is not None:
            self.writer.write(record)
        if self.bar is not None:
            self.bar.update(t.iter - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.3g}", img_s=f"{ims:.0f}")
        eta = (t.stop_iter - t.iter) * self.total_time / max(1, t.iter - t.start_iter)
        parts = [f"loss {record['loss']:.4f}"]
        if len(t.last_losses) > 1:  # the terms, as written to the record above
            parts += [f"{k} {record[k]:.4f}" for k in t.last_losses]
        logger.info(
            "iter %d/%d  %s  lr %.4g  %.1f img/s  %.3f s/it  eta %s",
            t.iter,
            t.stop_iter,
            "  ".join(parts),
            record["lr"],
            ims,
            record["time_per_iter"],
            _eta(eta),
            extra={"file_only": self.bar is not None},
        )
        self._t0, self._it0, self._eval0 = now, t.iter, t.eval_time
        self._loss_sum, self._n = None, 0
        if not math.isfinite(record["loss"]):  # pragma: no cover - check_finite above raises first
            raise NonFiniteLossError(f"non-finite loss at iteration {t.iter}")

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
