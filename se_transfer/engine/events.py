"""Run records: metrics.jsonl (one JSON object per line), TensorBoard events, PNG plots and the closing summary."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("se_transfer")


def setup_logger(output_dir: str | os.PathLike | None, rank: int = 0) -> logging.Logger:
    """Log INFO to stdout (rank 0) and to OUTPUT_DIR/log.txt (rank 0) or log.txt.rankN."""
    root = logging.getLogger("se_transfer")
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        root.addHandler(h)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
        fh = logging.FileHandler(Path(output_dir) / name)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    return root


class MetricsWriter:
    """Appends records to OUTPUT_DIR/metrics.jsonl and scalars to TensorBoard (rank 0 only)."""

    def __init__(self, output_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.output_dir))
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard events will be written")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold 'iteration')."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, record["iteration"])

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str | os.PathLike, after_iteration: int) -> None:
    """Drop records past ``after_iteration`` (a resumed run rewrites them), atomically; call before opening a writer."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("iteration", 0) <= after_iteration]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def plot_metrics(path: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """PNG plots of the curves in metrics.jsonl: loss.png, lr.png, accuracy.png (top-1/5), ap.png (COCO AP)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(path)
    groups = {"loss": ["loss"], "lr": ["lr"], "accuracy": ["top1", "top5"], "ap": ["AP", "AP50", "AP75"]}
    written = []
    for name, keys in groups.items():
        series = {k: [(r["iteration"], r[k]) for r in records if k in r] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, pts in series.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k, marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("iteration")
        ax.set_ylabel(name + (" (%)" if name in ("accuracy", "ap") else ""))
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = Path(output_dir) / f"{name}.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        written.append(out)
    return written


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
