"""Training engine: trainer and hooks, checkpoints, solver, distributed helpers, run records."""

from .checkpoint import Checkpointer, atomic_torch_save
from .distributed import get_rank, get_world_size, is_main_process, launch
from .events import MetricsWriter, format_table, plot_metrics, read_metrics, setup_logger
from .setup import default_setup, resolve_device, seed_all
from .solver import build_lr_scheduler, build_optimizer, lr_factor
from .trainer import CheckpointHook, EvalHook, HookBase, LoggingHook, LRSchedulerHook, NonFiniteLossError, Trainer

__all__ = [
    "CheckpointHook",
    "Checkpointer",
    "EvalHook",
    "HookBase",
    "LRSchedulerHook",
    "LoggingHook",
    "MetricsWriter",
    "NonFiniteLossError",
    "Trainer",
    "atomic_torch_save",
    "build_lr_scheduler",
    "build_optimizer",
    "default_setup",
    "format_table",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "launch",
    "lr_factor",
    "plot_metrics",
    "read_metrics",
    "resolve_device",
    "seed_all",
    "setup_logger",
]
