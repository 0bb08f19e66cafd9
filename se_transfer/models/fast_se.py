"""The fast forms of the SE blocks, applied by one explicit model transform: :func:`set_se_impl`.

``SEModule`` and the residual blocks compute the textbook SE. ``set_se_impl(model, impl)`` (called by
``create_model(..., se_impl=...)``, default 'auto') rewrites a model in place, as detectron2's
``convert_frozen_batchnorm`` does, so that its SE blocks take the fast paths of ``se_transfer.ops``:

* every ``SEModule`` becomes a :class:`FastSEModule`: the same parameters, buffers and state-dict keys, plus an
  ``impl`` ('auto', 'eager' or 'triton'). With 'eager' it is exactly the textbook block; otherwise each call asks
  ``se_transfer.ops.dispatch.choose`` which path runs: the fused Triton op for the SE + residual sum, the native CPU
  excitation, or the textbook ops;
* every ``Bottleneck`` with the standard SE placement becomes a :class:`FastBottleneck`, which at inference
  without autograd takes the squeeze from the input of its last 1x1 conv (``se_transfer.ops.producer_fold``).

The rewrite changes the classes of the modules (``module.__class__``), nothing else: parameters stay the same
objects (optimizers and DDP keep working), checkpoints load both ways, and calling it again only changes ``impl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..ops import cpu_gate, producer_fold
from ..ops.dispatch import EXCITATION, FOLD, NATIVE, PRODUCER, RESIDUAL, TRITON, Derived, check_impl, choose
from .resnet import Bottleneck
from .se import SEModule


class FastSEModule(SEModule):
    """An ``SEModule`` computed by the path ``se_transfer.ops.dispatch.choose`` picks for each call (see there)."""

    impl: str

    def _start(self, impl: str) -> None:
        self.impl = impl
        self._native = Derived()  # fc1/fc2 in the native kernel's layout
        self._fold = Derived()  # the producer fold

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        if choose(self.impl, x, EXCITATION, self.avg_squeeze) == NATIVE:
            params = self._native_params()
            if params is not None:
                return cpu_gate.excitation(params, x)
        return super().excitation(x)

    def _native_params(self) -> cpu_gate.GateParams | None:
        """fc1 and fc2 for the native kernel (None where it cannot run), rebuilt when their tensors change."""
        w1, b1, w2, b2 = self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias

        def build():
            return cpu_gate.gate_params(w1.flatten(1), b1, w2.flatten(1).t(), b2, self.gate_type)

        return self._native.get((w1, b1, w2, b2), build)

    def residual_sum(self, u: torch.Tensor, shortcut: torch.Tensor, relu: bool = True) -> torch.Tensor:
        if choose(self.impl, u, RESIDUAL, self.avg_squeeze, self.extra_repr) == TRITON:
            from ..ops.fused_se import se_scale_residual

            fc1, fc2 = self.fc1, self.fc2
            return se_scale_residual(u, shortcut, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.gate_type, relu)
        return super().residual_sum(u, shortcut, relu)

    def producer_fold(self, x: torch.Tensor, producer: nn.Module, norm: nn.Module) -> producer_fold.Fold | None:
        """The fold for U = norm(producer(h)) in a block with input ``x`` when the fold path runs, else None; it is
        rebuilt first when any tensor it comes from changed."""
        if choose(self.impl, x, PRODUCER, self.avg_squeeze) != FOLD:
            return None
        if not producer_fold.fits(producer, norm) or not producer_fold.norm_is_fixed(norm):
            return None
        fc1, fc2 = self.fc1, self.fc2

        def build():
            return producer_fold.fold(producer, norm, fc1, fc2, self.gate_type)

        return self._fold.get(producer_fold.sources(producer, norm, fc1, fc2), build, extra=(norm.eps,))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl}"


class FastBottleneck(Bottleneck):
    """A ``Bottleneck`` with the standard SE placement whose inference takes the producer fold where it applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se = self.se
        fold = se.producer_fold(x, self.conv3, self.bn3)
        if fold is None:
            return super().forward(x)
        # the gate comes from the input h of conv3, so U is written once and read once (by the scale + sum)
        shortcut = self.shortcut(x)
        h = self.residual_head(x)
        return se(self.bn3(self.conv3(h)), shortcut, True, producer_fold.excitation(fold, h))


def set_se_impl(model: nn.Module, impl: str) -> nn.Module:
    """Rewrite ``model``'s SE blocks (in place) to be computed with ``impl`` ('auto', 'eager' or 'triton'; see
    ``se_transfer.ops.dispatch``) and return it."""
    check_impl(impl)
    for m in model.modules():
        if isinstance(m, SEModule):
            if not isinstance(m, FastSEModule):
                m.__class__ = FastSEModule
                m._start(impl)
            m.impl = impl
        elif type(m) is Bottleneck and m.se_variant == "standard":
            m.__class__ = FastBottleneck
    return model


@contextlib.contextmanager
def se_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily compute every SE block of ``model`` with ``impl``; the previous choices come back afterwards (a
    block that was textbook comes back as 'eager', which computes the same)."""
    previous = [(m, getattr(m, "impl", "eager")) for m in model.modules() if isinstance(m, SEModule)]
    set_se_impl(model, impl)
    try:
        yield model
    finally:
        for m, old in previous:
            m.impl = old
