"""Top-1 / top-5 accuracy, one definition for every classification task."""

from __future__ import annotations

import torch


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hit, top-k hit) per row of ``scores`` (N x classes; logits or probabilities) for ``labels`` (N)."""
    top = scores.float().topk(min(k, scores.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return hit[:, 0], hit.any(1)


def accuracy_results(top1_hits: float, top5_hits: float, total: int) -> dict[str, float]:
    """top1, top5, top1_err, top5_err (%) and num_images from hit counts over ``total`` images."""
    acc1, acc5 = 100.0 * top1_hits / total, 100.0 * top5_hits / total
    return {"top1": acc1, "top5": acc5, "top1_err": 100.0 - acc1, "top5_err": 100.0 - acc5, "num_images": int(total)}


def accuracy_rows(results: dict[str, float]) -> list[tuple[str, str]]:
    """The summary rows of an accuracy result."""
    return [
        ("top-1 accuracy / error (%)", f"{results['top1']:.2f} / {results['top1_err']:.2f}"),
        ("top-5 accuracy / error (%)", f"{results['top5']:.2f} / {results['top5_err']:.2f}"),
    ]
