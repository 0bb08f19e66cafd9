"""Command-line entry points: ``tools/*.py`` and the ``se-*`` console scripts are thin wrappers around these.

Every parser is built without importing torch (``--help`` is instant) and every expected failure ends in one
``error: ...`` line with exit status 2 (``errors``). Shared option names live in ``args``."""

from .analysis import ablate_se_main, analyze_excitation_main
from .errors import (
    ERROR_DIR_ENV,
    UsageError,
    WorkerError,
    collect_worker_errors,
    command,
    error_line,
    expected_errors,
    report_error,
)
from .tools import (
    PAPER_GFLOPS,
    TABLE2_MODELS,
    benchmark_cifar_main,
    benchmark_main,
    benchmark_places_main,
    complexity_main,
    convert_weights_main,
    eval_coco_main,
    fault_inject_main,
    list_models_main,
    train_net_d2_main,
    visualize_main,
)
from .train import claim_run_folder, compare_main, launch_run, parse_train_args, train_argument_parser, train_main

__all__ = [
    "ablate_se_main",
    "analyze_excitation_main",
    "ERROR_DIR_ENV",
    "PAPER_GFLOPS",
    "TABLE2_MODELS",
    "UsageError",
    "WorkerError",
    "benchmark_cifar_main",
    "benchmark_main",
    "benchmark_places_main",
    "claim_run_folder",
    "collect_worker_errors",
    "command",
    "compare_main",
    "complexity_main",
    "convert_weights_main",
    "error_line",
    "eval_coco_main",
    "expected_errors",
    "fault_inject_main",
    "launch_run",
    "list_models_main",
    "parse_train_args",
    "report_error",
    "train_argument_parser",
    "train_main",
    "train_net_d2_main",
    "visualize_main",
]
