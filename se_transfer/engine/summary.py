"""The closing summary every run prints and writes to log.txt: what ran on what, how long, the metrics, the files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import CfgNode
from .distributed import is_main_process
from .events import format_table

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """'42.1 s', '12 min 05 s' or '3 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def summary_rows(
    cfg: CfgNode,
    results: dict[str, Any],
    *,
    data: str,
    metrics: Sequence[tuple[str, str]],
    files: Sequence[tuple[str, str]] = (),
    eval_only: bool = False,
) -> list[list[str]]:
    """The rows of a run's summary: task and model, weights, data, iterations and times, ``metrics`` (name, value),
    then where the plots, metrics, checkpoints, ``files`` and the log are."""
    out = Path(cfg.OUTPUT_DIR).resolve()
    model = cfg.MODEL.ARCH + (f" {dict(cfg.MODEL.KWARGS)}" if len(cfg.MODEL.KWARGS) else "")
    rows = [
        ["run", "evaluation only (--eval-only)" if eval_only else "training"],
        ["model", model],
        ["weights (MODEL.WEIGHTS)", cfg.MODEL.WEIGHTS or "none: random initialisation"],
        ["data set", data],
    ]
    if not eval_only and "iterations" in results:
        start = results.get("start_iter", 0)
        rows.append(["iterations", f"{results['iterations']}" + (f" (resumed at {start})" if start else "")])
        done = results["iterations"] - start
        rate = f" ({done / results['train_time_s']:.2f} it/s)" if done and results.get("train_time_s") else ""
        rows.append(["training time", format_duration(results.get("train_time_s", 0.0)) + rate])
    if results.get("eval_time_s") is not None:
        rows.append(["evaluation time", format_duration(results["eval_time_s"])])
    rows += [[k, v] for k, v in metrics]
    rows += [["plot", str(p)] for p in results.get("plots", [])]
    rows.append(["metrics", str(out / "metrics.jsonl")])
    if not eval_only and (out / "model_final.pth").is_file():
        rows.append(["checkpoint", str(out / "model_final.pth")])
    rows += [[k, str(v)] for k, v in files]
    rows.append(["log", str(out / "log.txt")])
    return rows


def print_summary(title: str, rows: list[list[str]]) -> str:
    """Print the summary table (main process) and write it to log.txt; return its text."""
    text = f"{title}\n{format_table(['summary', ''], rows, align='ll')}"
    if is_main_process():
        print(text, flush=True)
        logger.info("summary: %s", text, extra={"file_only": True})
    return text
