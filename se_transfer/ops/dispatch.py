"""The one place that decides how an SE block is computed.

Three implementations (``se_impl``) compute the same block with the same parameters, equal up to floating-point
rounding:

* ``'eager'``: the textbook PyTorch ops (``se_transfer.models.se.SEModule``);
* ``'triton'``: the fused CUDA kernels of ``se_transfer.ops.fused_se`` for the SE + residual sum, or an error saying
  why they cannot run;
* ``'auto'`` (default): the fused kernels on CUDA tensors when Triton is installed; elsewhere the textbook ops,
  except at inference without autograd, where a bottleneck takes its squeeze from the input of its last 1x1 conv
  (``se_transfer.ops.producer_fold``) and float32 CPU tensors get the excitation in one native call
  (``se_transfer.ops.cpu_gate``).

:func:`choose` is the only function that answers "which path runs for this call"; the SE modules of
``se_transfer.models.fast_se`` ask it and nothing else. The inference shortcuts are off under ``torch.compile`` (the
compiler fuses the squeeze itself) and tracing (a trace would keep folded weights as constants and record the
native call's output as an unfilled tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SE_IMPLS = ("auto", "eager", "triton")
# The paths of choose()
EAGER, TRITON, NATIVE, FOLD = "eager", "triton", "native", "fold"
# What a caller asks for: the block's tail (SE + residual sum), the excitation alone, or the producer fold
RESIDUAL, EXCITATION, PRODUCER = "residual", "excitation", "producer"


def check_impl(impl: str) -> None:
    """Validate an ``se_impl`` name; 'triton' also needs the triton package."""
    if impl not in SE_IMPLS:
        raise ValueError(f"se_impl must be one of {SE_IMPLS}, got {impl!r}")
    if impl == "triton":
        from .fused_se import triton_available

        if not triton_available():
            raise RuntimeError("se_impl='triton' needs the triton package (pip install triton); use se_impl='auto'")


def inference_shortcuts(impl: str) -> bool:
    """Whether the inference-only paths may run: 'auto', no autograd, neither compiling nor tracing."""
    return (
        impl == "auto"
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def choose(impl: str, x: torch.Tensor, op: str, avg_squeeze: bool, describe: Callable[[], str] | None = None) -> str:
    """The path that computes ``op`` (RESIDUAL, EXCITATION or PRODUCER) of an SE block on input ``x``.

    ``avg_squeeze``: whether the block is the paper's average-squeeze SE (the fused and native paths need it);
    ``describe()`` names the block in the error raised when ``impl='triton'`` cannot be honoured (called only then).
    Returns TRITON or EAGER for RESIDUAL, NATIVE or EAGER for EXCITATION, FOLD or EAGER for PRODUCER.
    """
    if impl == "eager":
        return EAGER
    if op == RESIDUAL:
        return TRITON if _triton(impl, x, avg_squeeze and x.dim() == 4, describe) else EAGER
    if not avg_squeeze or not inference_shortcuts(impl):
        return EAGER
    if op == EXCITATION:
        return NATIVE if x.dtype == torch.float32 and x.is_cpu else EAGER
    # the producer fold, where the fused kernels (scale + sum + relu in one pass) do not run
    return EAGER if x.is_cuda and _triton(impl, x, True, describe) else FOLD


def _triton(impl: str, u: torch.Tensor, supported: bool, describe: Callable[[], str] | None) -> bool:
    if impl == "auto" and not u.is_cuda:
        return False
    from . import fused_se

    if impl == "triton":
        if not supported:
            block = describe() if describe is not None else "?"
            raise RuntimeError(f"se_impl='triton' supports the average squeeze only (this block: {block})")
        if not fused_se.can_run(u):
            raise RuntimeError(
                f"se_impl='triton' needs Triton and a CUDA tensor (got a {u.device.type} tensor"
                f"{'' if fused_se.triton_available() else '; triton is not installed'}); use se_impl='auto'"
            )
        return True
    return supported and fused_se.can_run(u)


class Derived:
    """A value derived from some tensors (weights in a kernel's layout, a fold), rebuilt when any of them is
    replaced, moved to other storage (``.to``, ``.data =``) or modified in place: the key is their storage
    addresses and version counters."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: list | None = None
        self.value: object = None

    def get(self, sources, build, extra=()):
        """The cached value for ``sources`` (tensors or None) and ``extra`` (hashable), built by ``build()`` when
        they changed."""
        key = [None if t is None else (t.data_ptr(), t._version) for t in sources]
        key.extend(extra)
        if key != self.key:
            self.value = build()
            self.key = key
        return self.value
