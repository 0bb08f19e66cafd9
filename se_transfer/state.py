"""How a state dict differs from the one a model expects: the one comparison that weight loading (which adds what the
file holds, ``models.weights.check_fit``) and resuming (``engine.checkpoint``) both report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def misfit(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """'' when ``state`` has exactly the tensor names and shapes of ``expected``; else one clause naming the first
    missing, unexpected and mis-shaped tensors and their counts. BatchNorm's num_batches_tracked counters are ignored
    on both sides (old checkpoints and FrozenBN lack them)."""
    want = {k: tuple(v.shape) for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    problems = []
    for label, items in (
        ("missing", sorted(set(want) - set(have))),
        ("unexpected", sorted(set(have) - set(want))),
        ("mis-shaped", [f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in sorted(set(want) & set(have))
                        if want[k] != have[k]]),
    ):  # fmt: skip
        if items:
            shown = ", ".join(items[:2]) + (f", ... ({len(items)} in all)" if len(items) > 2 else "")
            problems.append(f"{label} tensors: {shown}")
    return "; ".join(problems)
