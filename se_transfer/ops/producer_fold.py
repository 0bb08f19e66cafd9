"""The producer fold: an SE block's squeeze taken from the input of the 1x1 convolution that produces U (inference).

With U = norm(W h) for a 1x1, stride-1, ungrouped producer W and a norm that is a fixed per-channel affine map
(scale a, shift b: BatchNorm in eval mode, FrozenBatchNorm2d), the mean of U over space is ``a * (W mean(h)) + b``,
so ``fc1(mean(U)) = W' mean(h) + b'`` with ``W' = fc1 diag(a) W`` and ``b' = fc1 b + b_fc1``. The squeeze then reads
h (a quarter of U's channels in a bottleneck) and fc1 reads W' (a quarter of its size), before U exists, so U is
written once and read once (by the scale + sum), as in the baseline's residual sum. Equal to the textbook excitation
of U up to floating-point rounding (W' and b' are computed in float64).

:func:`fold` builds the folded weights; :func:`excitation` applies them; :func:`fits` and :func:`sources` say when
a fold applies and which tensors it comes from (the caller caches the fold on them: ``se_transfer.ops.dispatch
.Derived``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from . import cpu_gate
from .gates import apply_gate

# BatchNorm's kernel updates running_mean/var in place without bumping their version counters; nn.BatchNorm2d bumps
# num_batches_tracked (a Python add_) on every such update, so that one stands for the statistics in a cache key.
_NORM_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_AFFINE = ("weight", "bias")


class Fold(NamedTuple):
    """The folded squeeze of one SE block: ``gate(w2_t^T relu(w_fold_t^T mean(h) + b_fold) + b2)``."""

    w_fold_t: torch.Tensor  # C_in x hidden, contiguous (addmm reads it row by row)
    b_fold: torch.Tensor  # hidden
    w2_t: torch.Tensor  # hidden x C (a transposed view of fc2's weight)
    b2: torch.Tensor | None  # C
    gate: str
    native: cpu_gate.GateParams | None  # the same weights for the native CPU kernel, where it runs


def fits(producer: nn.Module, norm: nn.Module) -> bool:
    """Whether U = norm(producer(h)) has the form the fold needs (structure only; see :func:`norm_is_fixed`)."""
    if not isinstance(producer, nn.Conv2d):
        return False
    if producer.kernel_size != (1, 1) or producer.stride != (1, 1) or producer.groups != 1:
        return False
    if producer.padding not in ((0, 0), "valid") or producer.dilation != (1, 1):
        return False
    if isinstance(norm, nn.BatchNorm2d):
        return norm.running_mean is not None and norm.running_var is not None
    return isinstance(norm, FrozenBatchNorm2d)


def norm_is_fixed(norm: nn.Module) -> bool:
    """Whether the norm is an affine map now (a BatchNorm in training mode uses the batch's statistics)."""
    return not (norm.training and isinstance(norm, nn.BatchNorm2d))


def sources(producer: nn.Module, norm: nn.Module, fc1: nn.Module, fc2: nn.Module) -> list[torch.Tensor | None]:
    """Every tensor the fold is computed from (its cache key)."""
    parts = ((producer, _AFFINE), (norm, _NORM_STATE), (fc1, _AFFINE), (fc2, _AFFINE))
    return [getattr(m, name, None) for m, names in parts for name in names]


def fold(producer: nn.Conv2d, norm: nn.Module, fc1: nn.Conv2d, fc2: nn.Conv2d, gate: str) -> Fold:
    """The folded weights W', b' (float64 maths, stored in fc1's dtype) and fc2, for :func:`excitation`."""
    with torch.no_grad():
        f64 = torch.float64
        scale = norm.running_var.to(f64).add(norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight.to(f64)
        shift = -norm.running_mean.to(f64) * scale
        if norm.bias is not None:
            shift = shift + norm.bias.to(f64)
        if producer.bias is not None:
            shift = shift + producer.bias.to(f64) * scale
        w1 = fc1.weight.flatten(1).to(f64)
        w_fold = w1 @ (scale[:, None] * producer.weight.flatten(1).to(f64))  # hidden x C_in
        b_fold = w1 @ shift
        if fc1.bias is not None:
            b_fold = b_fold + fc1.bias.to(f64)
        dtype = fc1.weight.dtype
        w2_t = fc2.weight.flatten(1).t()
        w_fold, b_fold = w_fold.to(dtype), b_fold.to(dtype)
        native = cpu_gate.gate_params(w_fold, b_fold, w2_t, fc2.bias, gate)
        return Fold(w_fold.t().contiguous(), b_fold, w2_t, fc2.bias, gate, native)


def excitation(f: Fold, h: torch.Tensor) -> torch.Tensor:
    """The SE gate (N x C x 1 x 1) of U = norm(producer(h)), computed from h without U (no autograd)."""
    if f.native is not None and h.dtype == torch.float32:
        return cpu_gate.excitation(f.native, h)  # the four ops below in one native call
    n = h.shape[0]
    hidden = torch.addmm(f.b_fold, h.sum((2, 3)), f.w_fold_t, alpha=1.0 / (h.shape[2] * h.shape[3])).relu_()
    s = torch.mm(hidden, f.w2_t) if f.b2 is None else torch.addmm(f.b2, hidden, f.w2_t)
    return apply_gate(s, f.gate, inplace=True).view(n, -1, 1, 1)
