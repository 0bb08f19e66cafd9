"""Run records: metrics.jsonl (one JSON object per line), TensorBoard events, PNG plots and the closing summary."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..io import atomic_write_text

T = TypeVar("T")

logger = logging.getLogger("se_transfer")


def _console_record(record: logging.LogRecord) -> bool:
    """Records for the console: all but those marked ``extra={"file_only": True}`` (the progress bar shows those)."""
    return not getattr(record, "file_only", False)


def setup_logger(output_dir: str | os.PathLike | None, rank: int = 0) -> logging.Logger:
    """Log INFO to stdout (rank 0) and to OUTPUT_DIR/log.txt (rank 0) or log.txt.rankN.

    Records logged with ``extra={"file_only": True}`` (the per-iteration lines, which the progress bar shows on the
    console, and the closing summary, which is printed) go to the files only."""
    root = logging.getLogger("se_transfer")
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        h.addFilter(_console_record)
        root.addHandler(h)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
        fh = logging.FileHandler(Path(output_dir) / name)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    return root


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """``iterable`` with a tqdm progress bar (count, rate, ETA) on the main process; the iterable itself elsewhere."""
    from .distributed import is_main_process

    if not is_main_process():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers; strict parsers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsWriter:
    """Appends records to OUTPUT_DIR/metrics.jsonl and scalars to TensorBoard (rank 0 only).

    ``start_iter``: a training run that starts (0) or resumes (N) there: metrics.jsonl keeps the training records up
    to N (a fresh run starts an empty file; an earlier evaluation-only row goes too). None (evaluation only): the
    records are kept and appended to. The folder keeps one TensorBoard events file: earlier ones are removed and the
    kept records written again into the new one, so TensorBoard shows each curve once.
    """

    def __init__(self, output_dir: str | os.PathLike, start_iter: int | None = None, tensorboard: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        kept = read_metrics(self.path) if self.path.is_file() else []
        if start_iter is not None:
            kept = [r for r in kept if not r.get("eval_only") and 0 < r.get("iteration", 0) <= start_iter]
            atomic_write_text(self.path, "".join(_json_line(r) for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard events will be written")
            else:
                for old in self.output_dir.glob("events.out.tfevents.*"):
                    old.unlink()
                self._tb = SummaryWriter(log_dir=str(self.output_dir))
                for r in kept:
                    self._add_scalars(r)

    def _add_scalars(self, record: dict[str, Any]) -> None:
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(k, v, record["iteration"])

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold 'iteration'); non-finite numbers are written as null."""
        self._file.write(_json_line(record))
        self._file.flush()
        if self._tb is not None:
            self._add_scalars(record)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(json_safe(record), allow_nan=False) + "\n"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def plot_metrics(path: str | os.PathLike, output_dir: str | os.PathLike, title: str = "") -> list[Path]:
    """PNG plots of metrics.jsonl for a report: loss.png (total and each component, log scale), lr.png, and at the
    evaluations accuracy.png (top-1 and top-5, 0-100%) or ap.png (COCO AP; one evaluation: a labelled bar chart).

    ``title``: what the run is (e.g. 'se_resnet20 on cifar10'), put above every plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(path) if not r.get("eval_only")]
    loss_keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")})
    groups = {
        "loss": (loss_keys, "training loss", "loss (log scale)"),
        "lr": (["lr"], "learning rate", "learning rate"),
        "accuracy": (["top1", "top5"], "evaluation accuracy", "accuracy (%)"),
        "ap": (list(_AP_KEYS), "COCO box AP", "AP (%)"),
    }
    styles = {"top1": dict(marker="o", lw=2.0, zorder=3), "top5": dict(marker="s", ls="--", lw=1.5, zorder=2)}
    written = []
    for name, (keys, what, ylabel) in groups.items():
        series = {k: [(r["iteration"], r[k]) for r in records if isinstance(r.get(k), (int, float))] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if name == "ap" and max(len(v) for v in series.values()) == 1:
            _ap_bars(ax, {k: v[0][1] for k, v in series.items()}, next(iter(series.values()))[0][0])
        else:
            for k, pts in series.items():
                xs, ys = zip(*pts)
                style = styles.get(k, {"marker": "o" if len(pts) < 30 else None, "lw": 2.0 if k == "loss" else 1.2})
                ax.plot(xs, ys, label=k if k != "loss" or len(series) == 1 else "loss (total)", clip_on=False, **style)
            ax.set_xlabel("iteration")
            if name == "loss":
                ax.set_yscale("log")
            if name in ("accuracy", "ap"):
                values = [y for pts in series.values() for _, y in pts]
                ax.set_ylim(0 if name == "ap" else max(0.0, 10 * math.floor(min(values) / 10) - 5), 100)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=9)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what}: {title}" if title else what)
        fig.tight_layout()
        out = Path(output_dir) / f"{name}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def _ap_bars(ax: Any, values: dict[str, float], iteration: int) -> None:
    """One evaluation's AP numbers as labelled bars on a 0-100 axis."""
    names = list(values)
    bars = ax.bar(names, [values[k] for k in names], color=["#1f77b4" if k == "AP" else "#7fa7cf" for k in names])
    for bar, k in zip(bars, names):
        ax.annotate(f"{values[k]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", xytext=(0, 2), textcoords="offset points", fontsize=9)  # fmt: skip
    ax.set_ylim(0, 109)  # room for a label above a bar at 100
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"metric (evaluation at iteration {iteration})")
    ax.grid(axis="y", alpha=0.3)


def format_table(headers: list[str], rows: list[list[Any]], align: str = "") -> str:
    """A plain-text table; ``align`` holds one 'l' or 'r' per column (default: first left, the others right)."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
