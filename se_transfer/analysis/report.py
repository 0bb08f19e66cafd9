"""The files, plots and table of an excitation analysis (see ``se_transfer.analysis.excitation``).

* ``excitation_stats.npz``: ``classes`` (names), ``counts`` (images per class), ``blocks`` (names, forward order),
  and per block ``<block>.mean`` / ``<block>.std`` (classes x channels; NaN for a class without images),
  ``<block>.all_mean`` / ``<block>.all_std`` (channels, over every image);
* ``excitation_stats.json``: the run (model, weights, images), per block its stage, channels and summary numbers
  (``ExcitationStats.summary``), and for the plotted blocks the mean gate of every channel for "all" and for each
  plotted class; per stage the same numbers averaged;
* ``excitation_<block>.png`` for each plotted block, in the style of the paper's Fig. 6 (channel index against mean
  excitation, one line per class and one for all images), ``excitation_blocks.png`` with all of them in one panel,
  and ``excitation_depth.png``: class spread and saturation of every block along the network.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.events import format_table
from ..io import atomic_write, atomic_write_bytes, atomic_write_text
from .excitation import HIGH, LOW, ExcitationStats


def stage_rows(stats: ExcitationStats) -> list[dict[str, Any]]:
    """Per stage: its blocks and the mean over them of each summary number."""
    stages: dict[int, list[dict[str, float]]] = {}
    for name, block in stats.blocks.items():
        stages.setdefault(block.stage, []).append(stats.summary(name))
    rows = []
    for stage, summaries in sorted(stages.items()):
        row: dict[str, Any] = {"stage": stage, "blocks": len(summaries)}
        for key in summaries[0]:
            row[key] = sum(s[key] for s in summaries) / len(summaries)
        rows.append(row)
    return rows


def stage_table(stats: ExcitationStats) -> str:
    """The printed table: per stage, how class-specific and how saturated the gates are."""
    headers = ["stage", "SE blocks", "mean gate", "class spread", "within-class std", f"% > {HIGH}", f"% < {LOW}"]
    cells = [
        [
            f"SE_{r['stage']}_x",
            str(r["blocks"]),
            f"{r['mean']:.3f}",
            f"{r['class_spread']:.4f}",
            f"{r['within_class_std']:.4f}",
            f"{100 * r['frac_high']:.1f}",
            f"{100 * r['frac_low']:.1f}",
        ]
        for r in stage_rows(stats)
    ]
    return format_table(headers, cells, align="lrrrrrr")


def write_report(
    stats: ExcitationStats,
    out: Path,
    class_names: list[str],
    plot_blocks: list[str],
    plot_classes: list[int],
    run: dict[str, Any],
) -> list[Path]:
    """Write the npz, the JSON and the plots into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [_write_npz(stats, out / "excitation_stats.npz", class_names)]
    blocks = {}
    for name, block in stats.blocks.items():
        entry: dict[str, Any] = {"stage": block.stage, "index": block.index, "module": block.module_name,
                                 "channels": block.channels, **stats.summary(name)}  # fmt: skip
        if name in plot_blocks:
            entry["all_mean"] = _floats(stats.overall(name)[0])
            means = stats.class_mean(name)
            entry["class_mean"] = {class_names[k]: _floats(means[k]) for k in plot_classes}
        blocks[name] = entry
    counts = stats.counts.long().tolist()
    doc = {
        **run,
        "num_images": stats.num_images,
        "thresholds": {"high": HIGH, "low": LOW},
        "plotted_blocks": plot_blocks,
        "plotted_classes": [class_names[k] for k in plot_classes],
        "images_per_class": {class_names[k]: counts[k] for k in range(len(class_names))},
        "stages": stage_rows(stats),
        "blocks": blocks,
    }
    paths.append(atomic_write_text(out / "excitation_stats.json", json.dumps(doc, indent=1) + "\n"))
    paths += plot_report(stats, out, class_names, plot_blocks, plot_classes, title=run.get("model", ""))
    for old in out.glob("excitation_SE_*.png"):  # an earlier run's plots of other blocks would read as this run's
        if old not in paths:
            old.unlink()
    return paths


def _floats(t) -> list[float | None]:  # noqa: ANN001 - a tensor
    return [None if v != v else round(v, 6) for v in t.tolist()]  # NaN (no images) -> null


def _write_npz(stats: ExcitationStats, path: Path, class_names: list[str]) -> Path:
    arrays: dict[str, np.ndarray] = {
        "classes": np.array(class_names),
        "counts": stats.counts.long().cpu().numpy(),
        "blocks": np.array(list(stats.blocks)),
    }
    for name in stats.blocks:
        mean, std = stats.overall(name)
        arrays[f"{name}.mean"] = stats.class_mean(name).float().cpu().numpy()
        arrays[f"{name}.std"] = stats.class_std(name).float().cpu().numpy()
        arrays[f"{name}.all_mean"] = mean.float().cpu().numpy()
        arrays[f"{name}.all_std"] = std.float().cpu().numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_report(
    stats: ExcitationStats,
    out: Path,
    class_names: list[str],
    plot_blocks: list[str],
    plot_classes: list[int],
    title: str = "",
) -> list[Path]:
    """One Fig.-6-style PNG per plotted block, all of them in one panel (``excitation_blocks.png``, as the paper's
    figure), and the depth summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in plot_blocks:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        _draw_block(ax, stats, name, class_names, plot_classes, plt)
        ax.set_title(f"{title} {name}".strip())
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # beside the lines
        fig.tight_layout()
        paths.append(_save(fig, out / f"excitation_{name}.png", plt))
    if plot_blocks:
        cols = min(3, len(plot_blocks))
        rows = -(-len(plot_blocks) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + 0.6), squeeze=False)
        for ax, name in zip(axes.flat, plot_blocks):
            _draw_block(ax, stats, name, class_names, plot_classes, plt)
            ax.set_title(name, fontsize=9)
        for ax in list(axes.flat)[len(plot_blocks) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=8, frameon=False)
        fig.suptitle(f"{title} mean excitation per channel".strip(), fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        paths.append(_save(fig, out / "excitation_blocks.png", plt))
    paths.append(_plot_depth(stats, out / "excitation_depth.png", title, plt))
    return paths


def _draw_block(ax: Any, stats: ExcitationStats, name: str, class_names: list[str], classes: list[int], plt: Any):
    """One block's mean excitation per channel: a line per class in ``classes`` and a black one for all images."""
    colours = plt.get_cmap("tab10")
    channels = np.arange(stats.blocks[name].channels)
    means = stats.class_mean(name).cpu().numpy()
    for i, k in enumerate(classes):
        ax.plot(channels, means[k], lw=0.9, color=colours(i % 10), label=class_names[k])
    ax.plot(channels, stats.overall(name)[0].cpu().numpy(), lw=1.4, color="black", label="all")
    ax.set(xlabel="channel index", ylabel="mean excitation", ylim=(-0.02, 1.02))
    if np.isfinite(means).any() and (np.nanmin(means) < 0 or np.nanmax(means) > 1):  # tanh / relu gates
        ax.autoscale(axis="y")
    ax.set_xlim(0, max(1, len(channels) - 1))


def _plot_depth(stats: ExcitationStats, path: Path, title: str, plt: Any) -> Path:
    names = list(stats.blocks)
    summaries = [stats.summary(n) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 3.6))
    ax.plot(x, [s["class_spread"] for s in summaries], "o-", color="tab:blue", label="class spread")
    ax.plot(x, [s["within_class_std"] for s in summaries], "s--", color="tab:green", ms=3, label="within-class std")
    ax.set(ylabel="std of the gate", title=f"{title} excitation along the network".strip())
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    right = ax.twinx()
    right.plot(x, [100 * s["frac_high"] for s in summaries], "^:", color="tab:red", ms=3, label=f"% > {HIGH}")
    right.plot(x, [100 * s["frac_low"] for s in summaries], "v:", color="tab:purple", ms=3, label=f"% < {LOW}")
    right.set(ylabel="saturated gates (%)", ylim=(0, 100))
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left", frameon=False)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path
