"""Top-1 / top-5 accuracy, one definition for every classification task."""

from __future__ import annotations

import torch

from ..engine.distributed import all_reduce_sum


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hit, top-k hit) per row of ``scores`` (N x classes; logits or probabilities) for ``labels`` (N)."""
    top = scores.float().topk(min(k, scores.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return hit[:, 0], hit.any(1)


class TopkCounts:
    """Top-1 / top-5 hits and images, counted batch by batch on the device and summed over processes at the end."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (top-1 hits, top-5 hits, images), float64

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``scores`` N x classes, ``labels`` N."""
        hit1, hit5 = topk_hits(scores, labels)
        batch = torch.stack([hit1.sum(), hit5.sum(), torch.tensor(len(labels), device=hit1.device)]).double()
        self.counts = batch if self.counts is None else self.counts + batch

    def totals(self, device: torch.device | str = "cpu") -> tuple[float, float, int]:
        """(top-1 hits, top-5 hits, images) of every process; ``device`` holds the zeros of a process that counted
        no batch (the all-reduce needs a tensor on each). No image at all is an error."""
        counts = torch.zeros(3, dtype=torch.float64, device=device) if self.counts is None else self.counts
        top1, top5, n = (float(c) for c in all_reduce_sum(counts))
        if n == 0:
            raise ValueError("the evaluation split holds no images")
        return top1, top5, int(n)

    def results(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """:func:`accuracy_results` of the totals."""
        return accuracy_results(*self.totals(device))


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
