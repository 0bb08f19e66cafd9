"""The Triton kernels of the fused SE op (``se_transfer.ops.fused_se``) and how they are tiled and launched.

The kernels are plain functions, jitted by :func:`kernels` on first use, so that this module imports without Triton.
Every load is cast to fp32, every accumulation is fp32, every store is cast to the element type of the output. A
tile is ``[BLOCK_HW, BLOCK_C]`` with the contiguous axis the long one (see :func:`blocks`); H and W are one HW axis
(:func:`canonical`), and each tensor's own (n, c, hw) strides go to the kernels (:func:`strides`).
"""

from __future__ import annotations

import functools
import types

import torch

# Tile policy: at most _TILE elements per tile, the contiguous axis at most _LONG_MAX wide; a reduction launches
# about _PROGRAMS_PER_SM x SM count programs on a GPU and splits H*W in at most _CPU_SPLIT chunks in the interpreter.
_TILE = 2048
_LONG_MAX = 256
_MAX_WARPS = 4
_PROGRAMS_PER_SM = 4
_CPU_SPLIT = 2


tl = None  # triton.language, bound by kernels() on first use (the kernels below resolve it as a global)

# ----------------------------------------------------------------------------------------------------------------
# Triton kernels (plain functions, jitted by kernels() on first use so that this module imports without Triton)
# ----------------------------------------------------------------------------------------------------------------


def _offsets(n, hw, c, s_n, s_c, s_hw):
    # element offsets of the [BLOCK_HW, BLOCK_C] tile (hw rows, c columns) of sample n in a tensor with these strides
    return n * s_n + hw[:, None] * s_hw + c[None, :] * s_c


def _elementwise_tile(HW_BLOCKS, C, HW, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    # the (n, hw, c) tile of this program in the elementwise kernels (grid: N * HW_BLOCKS, C blocks), and its masks
    pid = tl.program_id(0)
    n = (pid // HW_BLOCKS).to(tl.int64)
    hw = (pid % HW_BLOCKS) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    return n, hw, c, c_ok, (hw < HW)[:, None] & c_ok[None, :]


def _squeeze_kernel(
    x_ptr, part_ptr, C, HW, CHUNK, SPLIT, s_n, s_c, s_hw, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr
):
    # part[n, split, c] = sum of x[n, c, hw] over hw in [split * CHUNK, (split + 1) * CHUNK)
    pid = tl.program_id(0)
    n = (pid // SPLIT).to(tl.int64)
    split = pid % SPLIT
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    hw0 = split * CHUNK
    acc = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_HW):
        hw = hw0 + start + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + _offsets(n, hw, c, s_n, s_c, s_hw), mask=mask, other=0.0)
        acc += x.to(tl.float32)
    tl.store(part_ptr + pid * C + c, tl.sum(acc, axis=0), mask=c_ok)


def _scale_residual_kernel(
    u_ptr,
    sc_ptr,
    g_ptr,
    out_ptr,
    C,
    HW,
    HW_BLOCKS,
    su_n,
    su_c,
    su_hw,
    ss_n,
    ss_c,
    ss_hw,
    so_n,
    so_c,
    so_hw,
    RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # out = act(u * g[n, c] + shortcut)
    n, hw, c, c_ok, mask = _elementwise_tile(HW_BLOCKS, C, HW, BLOCK_HW, BLOCK_C)
    g = tl.load(g_ptr + n * C + c, mask=c_ok, other=0.0)
    u = tl.load(u_ptr + _offsets(n, hw, c, su_n, su_c, su_hw), mask=mask, other=0.0)
    sc = tl.load(sc_ptr + _offsets(n, hw, c, ss_n, ss_c, ss_hw), mask=mask, other=0.0)
    y = u.to(tl.float32) * g[None, :] + sc.to(tl.float32)
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # not maximum(): a NaN stays NaN, as in torch.relu
    tl.store(out_ptr + _offsets(n, hw, c, so_n, so_c, so_hw), y.to(out_ptr.dtype.element_ty), mask=mask)


def _backward_reduce_kernel(
    go_ptr,
    out_ptr,
    u_ptr,
    dsc_ptr,
    part_ptr,
    C,
    HW,
    CHUNK,
    SPLIT,
    sg_n,
    sg_c,
    sg_hw,
    so_n,
    so_c,
    so_hw,
    su_n,
    su_c,
    su_hw,
    sd_n,
    sd_c,
    sd_hw,
    RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # dpre = grad_out * (out > 0) stored as d_shortcut (relu only); part[n, split, c] = partial sum_hw(dpre * u)
    pid = tl.program_id(0)
    n = (pid // SPLIT).to(tl.int64)
    split = pid % SPLIT
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    hw0 = split * CHUNK
    acc = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_HW):
        hw = hw0 + start + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & c_ok[None, :]
        dpre = tl.load(go_ptr + _offsets(n, hw, c, sg_n, sg_c, sg_hw), mask=mask, other=0.0).to(tl.float32)
        if RELU:
            o = tl.load(out_ptr + _offsets(n, hw, c, so_n, so_c, so_hw), mask=mask, other=0.0)
            dpre = tl.where(o <= 0, 0.0, dpre)  # torch's threshold_backward: a NaN output passes the gradient
            d_ptrs = dsc_ptr + _offsets(n, hw, c, sd_n, sd_c, sd_hw)
            tl.store(d_ptrs, dpre.to(dsc_ptr.dtype.element_ty), mask=mask)
        u = tl.load(u_ptr + _offsets(n, hw, c, su_n, su_c, su_hw), mask=mask, other=0.0)
        acc += dpre * u.to(tl.float32)
    tl.store(part_ptr + pid * C + c, tl.sum(acc, axis=0), mask=c_ok)


def _backward_input_kernel(
    src_ptr,
    out_ptr,
    g_ptr,
    dzs_ptr,
    du_ptr,
    C,
    HW,
    HW_BLOCKS,
    ss_n,
    ss_c,
    ss_hw,
    so_n,
    so_c,
    so_hw,
    sd_n,
    sd_c,
    sd_hw,
    RECOMPUTE_RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # du = dpre * g[n, c] + dz[n, c] / HW; src is dpre, or grad_out whose relu mask is recomputed from out
    n, hw, c, c_ok, mask = _elementwise_tile(HW_BLOCKS, C, HW, BLOCK_HW, BLOCK_C)
    dpre = tl.load(src_ptr + _offsets(n, hw, c, ss_n, ss_c, ss_hw), mask=mask, other=0.0).to(tl.float32)
    if RECOMPUTE_RELU:
        o = tl.load(out_ptr + _offsets(n, hw, c, so_n, so_c, so_hw), mask=mask, other=0.0)
        dpre = tl.where(o <= 0, 0.0, dpre)
    g = tl.load(g_ptr + n * C + c, mask=c_ok, other=0.0)
    dzs = tl.load(dzs_ptr + n * C + c, mask=c_ok, other=0.0)
    du = dpre * g[None, :] + dzs[None, :]
    tl.store(du_ptr + _offsets(n, hw, c, sd_n, sd_c, sd_hw), du.to(du_ptr.dtype.element_ty), mask=mask)


@functools.cache
def kernels() -> types.SimpleNamespace:
    """Import Triton and jit the kernels (once; TRITON_INTERPRET is read here, at decoration)."""
    global tl, _offsets, _elementwise_tile
    import triton
    import triton.language

    tl = triton.language
    # the kernels call these helpers by their global names, which must hold jitted functions when they compile
    _offsets, _elementwise_tile = triton.jit(_offsets), triton.jit(_elementwise_tile)
    return types.SimpleNamespace(
        squeeze=triton.jit(_squeeze_kernel),
        scale_residual=triton.jit(_scale_residual_kernel),
        backward_reduce=triton.jit(_backward_reduce_kernel),
        backward_input=triton.jit(_backward_input_kernel),
    )


# ----------------------------------------------------------------------------------------------------------------
# Launch helpers
# ----------------------------------------------------------------------------------------------------------------


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _hw_collapsible(t: torch.Tensor) -> bool:
    _, _, h, w = t.shape
    _, _, s_h, s_w = t.stride()
    return h == 1 or w == 1 or s_h == w * s_w


def canonical(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when (H, W) can be addressed as one HW axis, else a contiguous copy."""
    return t if _hw_collapsible(t) else t.contiguous()


def strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(n, c, hw) strides of a tensor that passed :func:`canonical`."""
    _, _, _, w = t.shape
    s_n, s_c, s_h, s_w = t.stride()
    return s_n, s_c, (s_w if w > 1 else s_h)


def new_like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # preserve_format: a dense t keeps its strides (NCHW, channels_last); the fake impls use the same rule
    return torch.empty_like(t, dtype=dtype)


def blocks(t: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_HW, BLOCK_C, num_warps) for a tile over ``t``: the contiguous axis is the long one."""
    _, C, H, W = t.shape
    HW = H * W
    _, s_c, s_hw = strides(t)
    if HW == 1 or (C > 1 and s_c < s_hw):  # channels_last: C is contiguous
        block_c = min(_pow2(C), _LONG_MAX)
        block_hw = min(_pow2(HW), max(1, _TILE // block_c))
    else:
        block_hw = min(_pow2(HW), _LONG_MAX)
        block_c = min(_pow2(C), max(1, _TILE // block_hw))
    # 256 elements per warp: 8 per thread and tensor, at most _MAX_WARPS (16 elements per thread on full tiles)
    num_warps = max(1, min(_MAX_WARPS, block_hw * block_c // 256))
    return block_hw, block_c, num_warps


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_reduction(device: torch.device, rows: int, HW: int, block_hw: int) -> tuple[int, int]:
    """(SPLIT, CHUNK) for a reduction over ``rows`` = N x channel blocks: CHUNK is a multiple of BLOCK_HW."""
    hw_blocks = cdiv(HW, block_hw)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = cdiv(_PROGRAMS_PER_SM * _sm_count(index), rows)
    else:
        wanted = _CPU_SPLIT
    split = max(1, min(hw_blocks, wanted))
    chunk = cdiv(hw_blocks, split) * block_hw
    return cdiv(HW, chunk), chunk
