"""The SE excitation for CPU inference in one native call (``csrc/se_gate.c``), compiled on first use.

At batch 1 the textbook excitation is five PyTorch ops per block (squeeze, FC, ReLU, FC, gate), and right after a
convolution each op costs tens of microseconds of cold caches and dispatch: about 4% of SE-ResNet-50's CPU time,
more than the arithmetic of the whole SE. ``csrc/se_gate.c`` computes ``gate(W2 relu(W1 mean_hw(h) + b1) + b2)`` in
one call, float32 only.

Threads: on Linux with torch's bundled GNU OpenMP the work is split over torch's own OpenMP threads,
``torch.get_num_threads()`` of them (batch 1: the squeeze and both FCs over channels; a batch: over samples); results
do not depend on the thread count.

How it is built: with the C compiler named by ``$CC`` (default ``cc``), ``-O3 -march=native``, into
``$SE_TRANSFER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/se_transfer``, i.e. ``~/.cache/se_transfer``) under a name
that hashes the source, the flags, the compiler's version and this CPU's model and flags, so a cache shared between
machines never hands one the other's build. The library is written to a temporary file and renamed into place, so
concurrent first uses (DDP ranks) are safe. Building takes well under a second.

Nothing here is required: without a compiler, with ``SE_TRANSFER_CPU_KERNEL=0``, or when the build or the load
fails, :func:`available` is False, :func:`unavailable_reason` says why, and the SE blocks compute the same gate with
PyTorch ops (see ``se_transfer.ops.producer_fold``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .gates import check_gate, gate_code

SOURCE = Path(__file__).with_name("csrc") / "se_gate.c"
ABI = 3  # SE_GATE_ABI in csrc/se_gate.c
# Reassociating the float sums lets the compiler vectorise the reductions; no -ffast-math (it would set
# flush-to-zero for the whole process through crtfastmath.o).
CFLAGS = (
    "-O3",
    "-march=native",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
)


def _openmp_flags() -> tuple[str, ...]:
    """-fopenmp where torch's own OpenMP runtime is GNU libgomp, already loaded in this process (Linux wheels): the
    library then binds to that same runtime and shares torch's thread pool and torch.set_num_threads. Anywhere else
    a second OpenMP runtime would fight torch's threads for the cores, so the kernel is built single-threaded."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            gomp = any("libgomp" in line for line in f)
    except OSError:
        return ()
    return ("-fopenmp",) if gomp and "OpenMP" in torch.__config__.parallel_info() else ()


DISABLE_ENV = "SE_TRANSFER_CPU_KERNEL"


class _Params(ctypes.Structure):
    _fields_ = [
        ("w1", ctypes.c_void_p),
        ("b1", ctypes.c_void_p),
        ("w2t", ctypes.c_void_p),
        ("b2", ctypes.c_void_p),
        ("cin", ctypes.c_int64),
        ("hid", ctypes.c_int64),
        ("c", ctypes.c_int64),
        ("gate", ctypes.c_int64),
    ]


_lock = threading.Lock()
_state: dict[str, object] = {}  # "fn": the loaded function, or "reason": why there is none


def cache_dir() -> Path:
    """Where compiled kernels are kept: $SE_TRANSFER_CACHE_DIR, else $XDG_CACHE_HOME/se_transfer (~/.cache)."""
    explicit = os.environ.get("SE_TRANSFER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "se_transfer"


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise RuntimeError(f"no C compiler: {cc!r} is not on PATH (set $CC or install gcc/clang)")
    return path


def _build(cc: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{cc} failed to compile {SOURCE} (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load():
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError(f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    cc = _compiler()
    flags = CFLAGS + _openmp_flags()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), " ".join(flags), cc, version, _cpu_identity()))
    ).hexdigest()[:16]
    target = cache_dir() / f"se_gate-{key}.so"
    for attempt in (0, 1):
        if not target.exists() or attempt:
            try:
                _build(cc, flags, target)
            except OSError:  # an unwritable cache: build into a private temporary directory instead
                target = Path(tempfile.mkdtemp(prefix="se_transfer-")) / target.name
                _build(cc, flags, target)
        try:
            lib = ctypes.CDLL(str(target))
            if lib.se_gate_abi() != ABI:
                raise OSError(f"{target} has ABI {lib.se_gate_abi()}, expected {ABI}")
            break
        except (OSError, AttributeError) as err:  # a damaged cached file: build it again once
            if attempt:
                raise RuntimeError(f"cannot load {target}: {err}") from err
    fn = lib.se_gate_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 5 + [ctypes.c_void_p, ctypes.c_int64]
    return fn


def _function():
    state = _state
    if "fn" not in state and "reason" not in state:
        with _lock:
            if "fn" not in state and "reason" not in state:
                try:
                    state["fn"] = _load()
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    state["reason"] = str(err)
    return state.get("fn")


def available() -> bool:
    """Whether the native gate can run here (compiles and loads it on the first call)."""
    return _function() is not None


def unavailable_reason() -> str | None:
    """Why the native gate cannot run here, or None when it can."""
    _function()
    return _state.get("reason")  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded kernel (and any failure), so that the next call builds or loads it again."""
    with _lock:
        _state.clear()


def gate_params(w1, b1, w2t, b2, gate: str) -> GateParams | None:
    """:class:`GateParams` for these weights, or None where the kernel cannot serve them: no kernel here, or a tensor
    that is not float32 on the CPU (PyTorch ops then compute the same excitation)."""
    if any(t is not None and (t.dtype != torch.float32 or not t.is_cpu) for t in (w1, b1, w2t, b2)):
        return None
    return GateParams(w1, b1, w2t, b2, gate) if available() else None


class GateParams:
    """The weights of one SE block's excitation, in the kernel's layout, kept alive as long as the kernel may read
    them: ``w1`` (hid x cin: the first FC; the kernel divides its sums by H*W), ``b1`` (hid, or None for no bias),
    ``w2t`` (hid x c: the second FC transposed), ``b2`` (c or None), all float32 CPU tensors, made contiguous here."""

    __slots__ = ("tensors", "struct", "ref", "channels", "in_channels", "fn")

    def __init__(self, w1, b1, w2t, b2, gate: str) -> None:
        fn = _function()
        if fn is None:
            raise RuntimeError(f"the native SE gate is not available: {unavailable_reason()}")
        check_gate(gate, "gate")
        if w1.dim() != 2 or w2t.dim() != 2:
            raise ValueError(f"w1 and w2t must be 2-D, got {w1.dim()}-D and {w2t.dim()}-D")
        if b1 is None:
            b1 = torch.zeros(w1.shape[0])
        tensors = [t if t is None else t.detach().contiguous() for t in (w1, b1, w2t, b2)]
        w1, b1, w2t, b2 = tensors
        hid, cin = w1.shape
        c = w2t.shape[1]
        for name, t, shape in (("w1", w1, (hid, cin)), ("b1", b1, (hid,)), ("w2t", w2t, (hid, c)), ("b2", b2, (c,))):
            if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape):
                raise ValueError(
                    f"{name} must be a float32 CPU tensor of shape {shape}, got {t.dtype} {t.device} {tuple(t.shape)}"
                )
        self.tensors = tensors
        self.fn = fn  # holds the library: a later reset() does not unload what these params run with
        self.channels = c
        self.in_channels = cin
        self.struct = _Params(
            w1.data_ptr(),
            b1.data_ptr(),
            w2t.data_ptr(),
            0 if b2 is None else b2.data_ptr(),
            cin,
            hid,
            c,
            gate_code(gate),
        )
        self.ref = ctypes.byref(self.struct)


def excitation(params: GateParams, h: torch.Tensor) -> torch.Tensor:
    """``gate(W2 relu(W1 mean_hw(h) + b1) + b2)`` as an N x C x 1 x 1 float32 tensor; no autograd.

    ``h`` is a float32 CPU tensor, N x cin x H x W, with any strides in which H and W merge into one axis
    (contiguous NCHW and channels_last do); other strides are made contiguous first."""
    if h.dtype != torch.float32 or not h.is_cpu or h.dim() != 4:
        raise ValueError(f"the native SE gate takes a 4-D float32 CPU tensor, got {h.dtype} {h.device} {h.dim()}-D")
    n, cin, hh, ww = h.shape
    if cin != params.in_channels:
        raise ValueError(f"h has {cin} channels, the SE block's first FC reads {params.in_channels}")
    sn, sc, sh, sw = h.stride()
    if hh > 1 and ww > 1 and sh != ww * sw:
        h = h.contiguous()
        sn, sc, sh, sw = h.stride()
    out = torch.empty((n, params.channels, 1, 1))
    status = params.fn(
        params.ref, h.data_ptr(), n, hh * ww, sn, sc, sw if ww > 1 else sh, out.data_ptr(), torch.get_num_threads()
    )
    if status != 0:
        raise MemoryError("se_gate_f32 could not allocate its scratch memory")
    return out
