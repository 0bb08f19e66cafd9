"""Fused Squeeze-and-Excitation + residual op for CUDA, written in Triton.

``se_scale_residual(u, shortcut, ...)`` computes ``act(shortcut + u * gate(FC2(relu(FC1(mean_hw(u))))))``, the tail of
an SE residual block, equal (forward and backward) to :func:`se_scale_residual_reference`.

Design
------
Only the N x C x H x W tensors are worth fusing: the excitation itself (two FCs on an N x C vector, the gate and,
in the backward pass, their manual derivatives) is tiny and stays in plain fp32 torch inside the ops. The big-tensor
work is four Triton kernels (``se_transfer.ops.triton_kernels``); every load is cast to fp32, every accumulation is
fp32, every store is cast to the element type of the output:

* squeeze: partial sums of ``u`` over chunks of H*W, one program per (n, channel block, split), into an fp32
  ``[N, SPLIT, C]`` buffer that torch sums and divides by H*W;
* forward: ``out = act(u * g[n, c] + shortcut)`` in one elementwise pass;
* backward pass 1: ``dpre = grad_out * (out > 0)`` (relu) is stored as the shortcut's gradient while the same pass
  reduces ``sum_hw(dpre * u)`` into ``[N, SPLIT, C]`` (the gate's gradient). Without the relu the shortcut's
  gradient is ``grad_out`` itself (no copy) and the pass only reduces;
* backward pass 2: ``du = dpre * g[n, c] + dz[n, c] / (H*W)`` in one elementwise pass, ``dz`` coming from the FC
  backward.

Big-tensor memory traffic (T = one N x C x H x W tensor): forward 1 read (squeeze) + 2 reads and 1 write; backward
3 reads and 1 write (pass 1) + 1 read and 1 write (pass 2): 4 T forward and 6 T backward, against about 8 T and
10 T for the textbook eager chain (mean, mul, add, relu and their autograd backward). The backward keeps ``u`` and,
with the relu, ``out`` (not the pre-activation) from the forward.

H and W are one HW axis, which needs ``stride_h == W * stride_w`` (contiguous NCHW and channels_last both qualify;
anything else is made contiguous first). Each tensor's own (n, c, hw) strides go to the kernels, so ``shortcut``
may have another layout (and another float dtype) than ``u``. Outputs take ``u``'s memory format. A tile is
``[BLOCK_HW, BLOCK_C]`` with the contiguous axis the long one (wide BLOCK_C for channels_last, wide BLOCK_HW for
NCHW), powers of two, masked for any N, C, H, W. The reductions split H*W so that a GPU gets about
``4 x SM count`` programs where H*W has that many tiles; the launch path has no host synchronisation.

Both directions are ``torch.library.custom_op`` s (``se_transfer::se_scale_residual`` returns ``out`` and the small
fp32 tensors the backward needs: the squeeze ``z``, the hidden activation ``a`` and the gate ``g``;
``se_transfer::se_scale_residual_backward``) with fake implementations, so ``torch.compile`` traces them as opaque
calls. Triton is imported on first use; without it (or on a CPU tensor outside Triton's interpreter,
``TRITON_INTERPRET=1``) the op raises a ``RuntimeError`` saying so.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import triton_kernels as tk
from .gates import GATES, apply_gate, gate_backward

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_TRITON: bool | None = None


def se_scale_residual_reference(u, shortcut, w1, b1, w2, b2, gate="sigmoid", relu=True):
    """Eager reference of :func:`se_scale_residual`: the fp32 SE excitation, scale, residual sum and relu."""
    _, g = _excite(u.float().mean((2, 3)), w1, b1, w2, b2, gate)
    out = shortcut.float() + u.float() * g[:, :, None, None]
    if relu:
        out = torch.relu(out)
    return out.to(torch.result_type(u, shortcut))


def triton_available() -> bool:
    """Whether Triton can be imported (checked once)."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            _TRITON = False
        else:
            _TRITON = True
    return _TRITON


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def can_run(t: torch.Tensor) -> bool:
    """Whether the fused op can run on ``t``'s device: CUDA, or the CPU under Triton's interpreter."""
    return triton_available() and (t.is_cuda or (t.device.type == "cpu" and _interpret()))


def se_scale_residual(u, shortcut, w1, b1, w2, b2, gate: str = "sigmoid", relu: bool = True) -> torch.Tensor:
    """Fused ``act(shortcut + u * gate(FC2(relu(FC1(mean_hw(u))))))``, equal to :func:`se_scale_residual_reference`.

    Args:
        u: the SE input U, N x C x H x W (fp32, fp16 or bf16).
        shortcut: the residual branch, U's shape; any float dtype of the three and any memory layout.
        w1, b1: the squeeze FC (hid x C x 1 x 1 or hid x C, bias hid or None).
        w2, b2: the excitation FC (C x hid x 1 x 1 or C x hid, bias C or None).
        gate: 'sigmoid', 'tanh' or 'relu'.
        relu: apply the block's final relu.

    Returns the result in ``torch.result_type(u, shortcut)`` with ``u``'s memory format; differentiable w.r.t. all
    tensor arguments. Raises ``RuntimeError`` when it cannot run (no Triton, a CPU tensor outside the interpreter,
    mismatched shapes, an unknown gate).
    """
    out, _, _, _ = torch.ops.se_transfer.se_scale_residual(u, shortcut, w1, b1, w2, b2, gate, relu)
    return out


def _validate(u, shortcut, w1, b1, w2, b2, gate) -> None:
    name = "se_scale_residual"
    if gate not in GATES:
        raise RuntimeError(f"{name}: unsupported gate {gate!r}; expected one of {GATES}")
    if u.dim() != 4:
        raise RuntimeError(f"{name}: u must be N x C x H x W, got shape {tuple(u.shape)}")
    if shortcut.shape != u.shape:
        raise RuntimeError(f"{name}: shortcut shape {tuple(shortcut.shape)} does not match u shape {tuple(u.shape)}")
    if u.dtype not in _DTYPES or shortcut.dtype not in _DTYPES:
        raise RuntimeError(
            f"{name}: u and shortcut must be float32, float16 or bfloat16, got {u.dtype}, {shortcut.dtype}"
        )
    if u.numel() == 0:
        raise RuntimeError(f"{name}: empty input of shape {tuple(u.shape)}")
    C, hid = u.shape[1], w1.shape[0]

    def fc_ok(w, rows, cols):
        return w.dim() in (2, 4) and tuple(w.shape[:2]) == (rows, cols) and all(s == 1 for s in w.shape[2:])

    if not fc_ok(w1, hid, C) or not fc_ok(w2, C, hid):
        raise RuntimeError(
            f"{name}: for C = {C}, w1 must be hid x C (x 1 x 1) and w2 C x hid (x 1 x 1), "
            f"got {tuple(w1.shape)} and {tuple(w2.shape)}"
        )
    if b1 is not None and tuple(b1.shape) != (hid,):
        raise RuntimeError(f"{name}: b1 must have shape ({hid},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (C,):
        raise RuntimeError(f"{name}: b2 must have shape ({C},), got {tuple(b2.shape)}")
    devices = {t.device for t in (u, shortcut, w1, b1, w2, b2) if t is not None}
    if len(devices) > 1:
        raise RuntimeError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")


def _require_runnable(u: torch.Tensor) -> None:
    if not triton_available():
        raise RuntimeError("se_scale_residual needs Triton, which is not installed")
    if not can_run(u):
        raise RuntimeError(
            f"se_scale_residual runs on CUDA tensors, or on CPU tensors under Triton's interpreter "
            f"(TRITON_INTERPRET=1); got a tensor on {u.device}"
        )


# ----------------------------------------------------------------------------------------------------------------
# The excitation (N x C, fp32) and its manual backward
# ----------------------------------------------------------------------------------------------------------------


def _excite(z, w1, b1, w2, b2, gate):
    # (callers disable autocast: it would otherwise reach these FCs through the op and make a and g half precision)
    a = torch.relu(F.linear(z, w1.flatten(1).float(), None if b1 is None else b1.float()))
    s = F.linear(a, w2.flatten(1).float(), None if b2 is None else b2.float())
    return a, apply_gate(s, gate)


def _excite_backward(dg, z, a, g, w1, b1, w2, b2, gate):
    ds = gate_backward(dg, g, gate)
    da = ds @ w2.flatten(1).float()  # N x hid
    dh = torch.where(a > 0, da, 0.0)  # through the hidden relu
    dz = dh @ w1.flatten(1).float()  # N x C
    dw1 = (dh.t() @ z).to(w1.dtype).reshape(w1.shape)
    dw2 = (ds.t() @ a).to(w2.dtype).reshape(w2.shape)
    db1 = dh.sum(0).to(torch.float32 if b1 is None else b1.dtype)
    db2 = ds.sum(0).to(torch.float32 if b2 is None else b2.dtype)
    return dz, dw1, db1, dw2, db2


# ----------------------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("se_transfer::se_scale_residual", mutates_args=())
def _se_scale_residual_op(
    u: torch.Tensor,
    shortcut: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    gate: str,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out, z, a, g): the result and the fp32 squeeze, hidden activation and gate."""
    _validate(u, shortcut, w1, b1, w2, b2, gate)
    _require_runnable(u)
    k = tk.kernels()
    u, shortcut = tk.canonical(u), tk.canonical(shortcut)
    N, C, H, W = u.shape
    HW = H * W
    block_hw, block_c, num_warps = tk.blocks(u)
    c_blocks = tk.cdiv(C, block_c)

    split, chunk = tk.split_reduction(u.device, N * c_blocks, HW, block_hw)
    part = torch.empty((N, split, C), device=u.device, dtype=torch.float32)
    k.squeeze[(N * split, c_blocks)](
        u, part, C, HW, chunk, split, *tk.strides(u), BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps
    )
    z = part.sum(1).div_(HW)
    with torch.autocast(u.device.type, enabled=False):
        a, g = _excite(z, w1, b1, w2, b2, gate)

    out = tk.new_like(u, torch.promote_types(u.dtype, shortcut.dtype))
    hw_blocks = tk.cdiv(HW, block_hw)
    k.scale_residual[(N * hw_blocks, c_blocks)](
        u,
        shortcut,
        g,
        out,
        C,
        HW,
        hw_blocks,
        *tk.strides(u),
        *tk.strides(shortcut),
        *tk.strides(out),
        RELU=relu,
        BLOCK_HW=block_hw,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    return out, z, a, g


@_se_scale_residual_op.register_fake
def _(u, shortcut, w1, b1, w2, b2, gate, relu):
    _validate(u, shortcut, w1, b1, w2, b2, gate)
    N, C = u.shape[:2]
    small = {"device": u.device, "dtype": torch.float32}
    out = tk.new_like(tk.canonical(u), torch.promote_types(u.dtype, shortcut.dtype))
    return out, u.new_empty((N, C), **small), u.new_empty((N, w1.shape[0]), **small), u.new_empty((N, C), **small)


@torch.library.custom_op("se_transfer::se_scale_residual_backward", mutates_args=())
def _se_scale_residual_backward_op(
    grad_out: torch.Tensor,
    out: torch.Tensor | None,
    u: torch.Tensor,
    z: torch.Tensor,
    a: torch.Tensor,
    g: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    gate: str,
    relu: bool,
    shortcut_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (du, d_shortcut, dw1, db1, dw2, db2).

    ``out`` is needed (and read) only with the relu; without it ``d_shortcut`` is ``grad_out`` itself, which an op
    cannot return (outputs must not alias inputs), so it comes back empty and the autograd wrapper uses grad_out.
    A missing bias gets an fp32 gradient that the wrapper drops.
    """
    _validate_backward(grad_out, out, u, relu)
    _require_runnable(u)
    k = tk.kernels()
    grad_out, u = tk.canonical(grad_out), tk.canonical(u)
    N, C, H, W = u.shape
    HW = H * W
    block_hw, block_c, num_warps = tk.blocks(u)
    c_blocks = tk.cdiv(C, block_c)
    tiles = {"BLOCK_HW": block_hw, "BLOCK_C": block_c, "num_warps": num_warps}

    if relu:
        out = tk.canonical(out)
        d_shortcut = d_shortcut_arg = tk.new_like(grad_out, shortcut_dtype)
    else:
        out = d_shortcut_arg = grad_out  # placeholders: the kernels touch neither without the relu
        d_shortcut = grad_out.new_empty((0,), dtype=shortcut_dtype)
    split, chunk = tk.split_reduction(u.device, N * c_blocks, HW, block_hw)
    part = torch.empty((N, split, C), device=u.device, dtype=torch.float32)
    k.backward_reduce[(N * split, c_blocks)](
        grad_out,
        out,
        u,
        d_shortcut_arg,
        part,
        C,
        HW,
        chunk,
        split,
        *tk.strides(grad_out),
        *tk.strides(out),
        *tk.strides(u),
        *tk.strides(d_shortcut_arg),
        RELU=relu,
        **tiles,
    )
    with torch.autocast(u.device.type, enabled=False):
        dz, dw1, db1, dw2, db2 = _excite_backward(part.sum(1), z, a, g, w1, b1, w2, b2, gate)

    # pass 2 reads dpre back from d_shortcut unless storing it there lost precision (shortcut narrower than out)
    reuse = relu and d_shortcut.dtype == grad_out.dtype
    src = d_shortcut if reuse else grad_out
    du = tk.new_like(u, u.dtype)
    hw_blocks = tk.cdiv(HW, block_hw)
    k.backward_input[(N * hw_blocks, c_blocks)](
        src,
        out,
        g,
        dz.div_(HW),
        du,
        C,
        HW,
        hw_blocks,
        *tk.strides(src),
        *tk.strides(out),
        *tk.strides(du),
        RECOMPUTE_RELU=relu and not reuse,
        **tiles,
    )
    return du, d_shortcut, dw1, db1, dw2, db2


def _validate_backward(grad_out, out, u, relu) -> None:
    if grad_out.shape != u.shape:
        raise RuntimeError(
            f"se_scale_residual_backward: grad_out shape {tuple(grad_out.shape)} != u shape {tuple(u.shape)}"
        )
    if relu and (out is None or out.shape != u.shape):
        shape = None if out is None else tuple(out.shape)
        raise RuntimeError(f"se_scale_residual_backward: relu needs out of u's shape {tuple(u.shape)}, got {shape}")


@_se_scale_residual_backward_op.register_fake
def _(grad_out, out, u, z, a, g, w1, b1, w2, b2, gate, relu, shortcut_dtype):
    _validate_backward(grad_out, out, u, relu)
    grad_out = tk.canonical(grad_out)
    if relu:
        d_shortcut = tk.new_like(grad_out, shortcut_dtype)
    else:
        d_shortcut = grad_out.new_empty((0,), dtype=shortcut_dtype)
    hid, C = w1.shape[0], u.shape[1]
    db1 = a.new_empty((hid,), dtype=torch.float32 if b1 is None else b1.dtype)
    db2 = a.new_empty((C,), dtype=torch.float32 if b2 is None else b2.dtype)
    return tk.new_like(tk.canonical(u), u.dtype), d_shortcut, torch.empty_like(w1), db1, torch.empty_like(w2), db2


def _setup_context(ctx, inputs, output) -> None:
    u, shortcut, w1, b1, w2, b2, gate, relu = inputs
    out, z, a, g = output
    ctx.mark_non_differentiable(z, a, g)
    ctx.save_for_backward(u, out if relu else None, z, a, g, w1, b1, w2, b2)
    ctx.gate, ctx.relu, ctx.shortcut_dtype = gate, relu, shortcut.dtype


def _backward(ctx, grad_out, _gz, _ga, _gg):
    u, out, z, a, g, w1, b1, w2, b2 = ctx.saved_tensors
    du, d_shortcut, dw1, db1, dw2, db2 = torch.ops.se_transfer.se_scale_residual_backward(
        grad_out, out, u, z, a, g, w1, b1, w2, b2, ctx.gate, ctx.relu, ctx.shortcut_dtype
    )
    if not ctx.relu:
        d_shortcut = grad_out.to(ctx.shortcut_dtype)  # grad_out itself when the dtypes agree
    return du, d_shortcut, dw1, None if b1 is None else db1, dw2, None if b2 is None else db2, None, None


_se_scale_residual_op.register_autograd(_backward, setup_context=_setup_context)
