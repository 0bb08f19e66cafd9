"""Checkpoints that lose nothing: atomic writes, everything needed to resume bit for bit, weights_only loading."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, atomic_write_text
from ..state import misfit
from .distributed import all_gather_object, get_rank, is_main_process

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save ``obj`` to ``path`` through a temporary file (``se_transfer.io.atomic_write``)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def compare_states(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], path: str | os.PathLike, what: str
) -> None:
    """The default check of a checkpoint against the model: ValueError naming the tensors that do not fit."""
    details = misfit(expected, state)
    if details:
        raise ValueError(f"{path}: does not fit {what}: {details}")


def rng_state() -> dict[str, Any]:
    """The RNG states of this process (torch CPU and CUDA, Python), as tensors and plain containers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    state["python_version"] = random.getstate()[0]
    state["python_gauss"] = random.getstate()[2]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: unreadable, incomplete, or of another model. Names the file."""


class Checkpointer:
    """Saves and restores model, optimizer, scheduler, grad scaler, RNG states and the iteration.

    Files: ``OUTPUT_DIR/model_{iter:07d}.pth``, ``model_final.pth`` and ``last_checkpoint`` (the newest file's name).
    Only rank 0 writes; every rank's RNG state is gathered into the file so that each resumes its own.
    """

    def __init__(self, output_dir: str | os.PathLike, model: torch.nn.Module, keep: int = 0, **objects: Any) -> None:
        self.output_dir = Path(output_dir)
        self.model = model
        self.keep = keep  # periodic checkpoints kept, the newest (0: all)
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.extra_meta: dict[str, Any] = {}
        # check_fit(model_state, checkpoint_state, path, what) raises ValueError explaining a checkpoint that does not
        # fit the model (a task gives its model family's; by default tensor names and shapes are compared)
        self.check_fit: Callable[..., None] = compare_states

    def save(self, name: str, iteration: int) -> Path | None:
        """Write ``name``.pth with everything needed to resume after ``iteration`` finished steps."""
        rngs = all_gather_object(rng_state())  # collective: every rank must call save
        if not is_main_process():
            return None
        data = {**self.extra_meta, "model": self.model.state_dict(), "iteration": iteration, "rng": rngs}
        for key, obj in self.objects.items():
            data[key] = obj.state_dict()
        path = atomic_torch_save(data, self.output_dir / f"{name}.pth")
        atomic_write_text(self.output_dir / LAST_CHECKPOINT, path.name)
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete all but the ``keep`` newest periodic checkpoints; never the one last_checkpoint names, nor
        model_final.pth. Returns what was deleted."""
        if self.keep <= 0:
            return []
        periodic = sorted(self.output_dir.glob("model_[0-9][0-9][0-9][0-9][0-9][0-9][0-9].pth"))
        marker = self.output_dir / LAST_CHECKPOINT
        protected = {marker.read_text().strip()} if marker.is_file() else set()
        doomed = [p for p in periodic[: -self.keep] if p.name not in protected]
        for p in doomed:
            p.unlink(missing_ok=True)
        if doomed:
            logger.info("SOLVER.CHECKPOINT_KEEP %d: deleted %s", self.keep, ", ".join(p.name for p in doomed))
        return doomed

    def last_checkpoint(self) -> Path | None:
        """The file named in OUTPUT_DIR/last_checkpoint, if any."""
        marker = self.output_dir / LAST_CHECKPOINT
        if not marker.is_file():
            return None
        path = self.output_dir / marker.read_text().strip()
        if not path.is_file():
            raise FileNotFoundError(f"{marker} names {path.name}, which does not exist in {self.output_dir}")
        return path

    def resume(self) -> int:
        """Restore the newest checkpoint completely; return the number of finished iterations (0 if none)."""
        path = self.last_checkpoint()
        if path is None:
            logger.info("no checkpoint in %s: starting from the beginning", self.output_dir)
            return 0
        if path.stat().st_size == 0:
            raise CheckpointError(f"cannot resume from {path}: the file is empty (0 bytes)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many types on foreign bytes (UnpicklingError, RuntimeError, ...)
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(
                f"cannot resume from {path}: not a checkpoint written by torch.save ({type(e).__name__}"
                f"{': ' + detail[:200] if detail else ''})"
            ) from None
        if not isinstance(data, dict):
            raise CheckpointError(f"cannot resume from {path}: it holds a {type(data).__name__}, not a checkpoint")
        missing = [k for k in ("model", "iteration", *self.objects) if k not in data]
        if missing:
            raise CheckpointError(f"cannot resume from {path}: it lacks {missing}")
        try:
            self.check_fit(self.model.state_dict(), data["model"], path, "the model this run builds")
        except ValueError as e:
            raise CheckpointError(f"cannot resume: {e} (a checkpoint of another architecture or config?)") from None
        self.model.load_state_dict(data["model"])
        for key, obj in self.objects.items():
            try:
                obj.load_state_dict(data[key])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"cannot resume from {path}: its {key} state does not fit ({e})") from None
        rngs = data.get("rng") or []
        if len(rngs) > get_rank():
            set_rng_state(rngs[get_rank()])
        logger.info("resumed from %s at iteration %d", path, data["iteration"])
        return int(data["iteration"])
