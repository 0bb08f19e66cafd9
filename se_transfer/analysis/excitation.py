"""What the SE blocks of a trained network do (the SENet paper's section 7): their gates, per image and per class.

* :func:`se_blocks` names a model's SE blocks as the paper does: ``SE_<stage>_<block>``, with stages counted from 2
  after the stem (conv2_x ... conv5_x of an ImageNet ResNet; 2 ... 4 for the CIFAR networks) and blocks from 1;
* :class:`ExcitationRecorder` holds forward pre-hooks on those blocks and hands over each forward's gates, one
  vector of C channels per image. Every residual unit calls its SE block as a module (``SEModule.forward``), so the
  hooks see every call whatever ``se_impl`` computes it; the gate is the one the fold path passed in, or else the
  textbook excitation of the block's input (``SEModule.excitation``, the paper's formula; the fused CUDA kernel never
  materialises its gate). The hooks change no output. NoSqueeze blocks give a gate per position: its spatial mean;
* :class:`ExcitationStats` accumulates, per block and per class, the sum and sum of squares of every channel's gate
  (float64, streaming: nothing per image is kept), sums them over processes, and derives the means, standard
  deviations and the summary numbers (:meth:`ExcitationStats.summary`);
* :func:`se_switched_off` sets the gates of chosen stages to 1 (the paper's SE-removal experiment at inference).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..models.se import SEModule

# a residual unit's SE block in every family of se_transfer: layer<i>.<j>.se (possibly under a detector's body)
_BLOCK = re.compile(r"(?:^|\.)layer(\d+)\.(\d+)\.se$")
HIGH, LOW = 0.99, 0.01  # a gate above HIGH is "saturated open", below LOW "closed"


@dataclass(frozen=True)
class SEBlock:
    """One SE block of a model: its paper-style name, stage (2, 3, ...), index in the stage (1, 2, ...)."""

    name: str
    stage: int
    index: int
    module_name: str
    channels: int


def se_blocks(model: nn.Module) -> dict[str, SEBlock]:
    """The model's SE blocks in forward order, by paper-style name (``SE_2_1``, ...); an error if it has none."""
    blocks = {}
    for module_name, m in model.named_modules():
        if not isinstance(m, SEModule):
            continue
        found = _BLOCK.search(module_name)
        if found is None:
            raise ValueError(f"SE block {module_name!r} is not in a residual unit layer<i>.<j>.se: cannot name it")
        stage, index = int(found.group(1)) + 1, int(found.group(2)) + 1
        name = f"SE_{stage}_{index}"
        blocks[name] = SEBlock(name, stage, index, module_name, m.channels)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no SE blocks: nothing to analyse (is it a baseline model?)")
    return blocks


def pick_blocks(blocks: dict[str, SEBlock], wanted: Iterable[str] | None) -> list[str]:
    """The blocks to plot: ``wanted`` (names such as SE_4_6, checked), or by default the paper's choice for
    SE-ResNet-50 (Fig. 6) generalised: the last block of every stage but the last, and the first, middle and last
    blocks of the last stage."""
    if wanted:
        unknown = [w for w in wanted if w not in blocks]
        if unknown:
            raise ValueError(f"--blocks {' '.join(unknown)}: no such SE block; this model has {_span(blocks)}")
        return list(dict.fromkeys(wanted))
    stages: dict[int, list[str]] = {}
    for b in blocks.values():
        stages.setdefault(b.stage, []).append(b.name)
    *early, last = sorted(stages)
    picked = [stages[s][-1] for s in early]
    tail = stages[last]
    picked += list(dict.fromkeys([tail[0], tail[(len(tail) - 1) // 2], tail[-1]]))
    return picked


def _span(blocks: dict[str, SEBlock]) -> str:
    per_stage: dict[int, int] = {}
    for b in blocks.values():
        per_stage[b.stage] = max(per_stage.get(b.stage, 0), b.index)
    return ", ".join(f"SE_{s}_1..SE_{s}_{n}" for s, n in sorted(per_stage.items()))


def gate_vectors(module: SEModule, x: torch.Tensor, excitation: torch.Tensor | None) -> torch.Tensor:
    """Per-image gates (N x C, float32) of ``module`` on input ``x``: ``excitation`` where the caller computed it,
    else the textbook excitation; a NoSqueeze gate (N x C x H x W) is averaged over positions."""
    with torch.no_grad():
        s = excitation if excitation is not None else SEModule.excitation(module, x)
        s = s.float()
        return s.mean((2, 3)) if s.dim() == 4 else s


class ExcitationRecorder:
    """Forward pre-hooks on a model's SE blocks that record each forward's gates (see the module doc).

    Use as a context manager (the hooks are removed on exit); after each forward, :meth:`pop` returns
    ``{block name: N x C gates}`` of the blocks given (default: all) and forgets them.
    """

    def __init__(self, model: nn.Module, blocks: Iterable[str] | None = None) -> None:
        self.blocks = se_blocks(model)
        names = list(self.blocks) if blocks is None else list(blocks)
        modules = dict(model.named_modules())
        self._modules = {n: modules[self.blocks[n].module_name] for n in names}
        self._gates: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> ExcitationRecorder:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):  # noqa: ANN202 - a hook
        def hook(module: SEModule, args: tuple, kwargs: dict) -> None:
            excitation = args[3] if len(args) > 3 else kwargs.get("excitation")
            if name in self._gates:
                raise RuntimeError(f"{name} ran twice in one forward: call ExcitationRecorder.pop() after each")
            self._gates[name] = gate_vectors(module, args[0], excitation)

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The gates recorded since the last call, by block name."""
        gates, self._gates = self._gates, {}
        return gates


class ExcitationStats:
    """Per block and per class: count, sum and sum of squares of each channel's gate, and how many gate values
    were above HIGH or below LOW; summed over processes by :meth:`all_reduce`."""

    def __init__(self, blocks: dict[str, SEBlock], num_classes: int, device: torch.device | str = "cpu") -> None:
        self.blocks = blocks
        self.num_classes = num_classes
        f64 = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, **f64)
        self.sums = {n: torch.zeros(num_classes, b.channels, **f64) for n, b in blocks.items()}
        self.squares = {n: torch.zeros(num_classes, b.channels, **f64) for n, b in blocks.items()}
        self.extremes = {n: torch.zeros(2, **f64) for n in blocks}  # (above HIGH, below LOW)

    def add(self, gates: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Count one batch: ``gates`` {block: N x C} of images whose classes are ``labels`` (N)."""
        labels = labels.to(self.counts.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1}: {labels.min()}..{labels.max()}")
        missing = set(self.blocks) - set(gates)
        if missing:
            raise ValueError(f"no gates recorded for {sorted(missing)} in this batch")
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        for name, s in gates.items():
            s = s.to(self.counts.device, torch.float64)
            if s.shape != (labels.numel(), self.blocks[name].channels):
                raise ValueError(f"{name}: gates of shape {tuple(s.shape)} for {labels.numel()} labels")
            self.sums[name].index_add_(0, labels, s)
            self.squares[name].index_add_(0, labels, s * s)
            self.extremes[name] += torch.stack([(s > HIGH).sum(), (s < LOW).sum()]).double()

    def all_reduce(self) -> None:
        """Sum the statistics of every process (a no-op in one process)."""
        from ..engine.distributed import all_reduce_sum

        self.counts = all_reduce_sum(self.counts)
        for table in (self.sums, self.squares, self.extremes):
            for name in table:
                table[name] = all_reduce_sum(table[name])

    @property
    def num_images(self) -> int:
        return int(self.counts.sum())

    def class_mean(self, name: str) -> torch.Tensor:
        """K x C: mean gate of each channel over the images of each class (NaN for a class without images)."""
        return self.sums[name] / self.counts[:, None]

    def class_std(self, name: str) -> torch.Tensor:
        """K x C: standard deviation of each channel's gate over the images of each class (population)."""
        mean = self.class_mean(name)
        return (self.squares[name] / self.counts[:, None] - mean * mean).clamp_min(0).sqrt()

    def overall(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of each channel's gate over every image (C each)."""
        n = self.counts.sum()
        mean = self.sums[name].sum(0) / n
        std = (self.squares[name].sum(0) / n - mean * mean).clamp_min(0).sqrt()
        return mean, std

    def summary(self, name: str) -> dict[str, float]:
        """One block's numbers: ``mean`` gate; ``class_spread``, the standard deviation over the classes seen of the
        class-mean gate, averaged over channels (0: every class gets the same gates; the paper's class-specific
        later blocks score high); ``within_class_std``, the image-to-image spread inside a class, averaged;
        ``frac_high`` / ``frac_low``, the fraction of gate values above 0.99 / below 0.01 (saturation)."""
        seen = self.counts > 0
        means = self.class_mean(name)[seen]
        values = self.num_images * self.blocks[name].channels
        spread = means.std(0, correction=0).mean() if len(means) > 1 else torch.zeros((), dtype=torch.float64)
        return {
            "mean": float(self.overall(name)[0].mean()),
            "class_spread": float(spread),
            "within_class_std": float(self.class_std(name)[seen].mean()),
            "frac_high": float(self.extremes[name][0]) / values,
            "frac_low": float(self.extremes[name][1]) / values,
        }


class _GateOne(SEModule):
    """An SE block whose gate is 1: ``x``, or ``act(shortcut + x)`` with its residual sum (see se_switched_off)."""

    def forward(self, x, shortcut=None, relu=True, excitation=None):  # noqa: ANN001, ANN201 - SEModule's signature
        if shortcut is None:
            return x
        out = shortcut + x
        return out.relu_() if relu else out

    def producer_fold(self, *args: object) -> None:  # the fold path of a FastBottleneck steps aside
        return None


def blocks_of_stages(model: nn.Module, stages: Iterable[int]) -> list[tuple[str, SEModule]]:
    """(name, module) of every SE block in ``stages``; an error names a stage without SE blocks."""
    stages = set(stages)
    blocks = se_blocks(model)
    present = {b.stage for b in blocks.values()}
    if not stages <= present:
        raise ValueError(f"no SE blocks in stage(s) {sorted(stages - present)}; this model has SE in {sorted(present)}")
    modules = dict(model.named_modules())
    return [(b.name, modules[b.module_name]) for b in blocks.values() if b.stage in stages]


@contextlib.contextmanager
def se_switched_off(model: nn.Module, stages: Iterable[int]) -> Iterator[list[str]]:
    """Inside the block, every SE block of ``stages`` (2, 3, ...) passes its input through unchanged (gate = 1), as
    if that stage had been built without SE; yields the blocks switched off. Parameters are untouched and the
    blocks come back on exit."""
    off = blocks_of_stages(model, stages)
    classes = [m.__class__ for _, m in off]
    for _, m in off:
        m.__class__ = _GateOne
    try:
        yield [name for name, _ in off]
    finally:
        for (_, m), cls in zip(off, classes):
            m.__class__ = cls
