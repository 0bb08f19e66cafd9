"""The options every tool shares, spelt one way: --model (several: --model A B; --models is an alias), --device,
--amp, --se-impl, --iters (--steps is an alias), --warmup, --rounds, --batch-size, --json.

Nothing here imports torch, so ``--help`` of every tool is instant; the choices below are checked against the
library's own tuples in the tests."""

from __future__ import annotations

import argparse
import re

SE_IMPL_CHOICES = ("auto", "eager", "triton")  # se_transfer.ops.dispatch.SE_IMPLS
AMP_CHOICES = ("none", "bf16", "fp16")  # se_transfer.benchmark.AMP_DTYPES
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions and epilogues kept as written (plain text)."""


def parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An ArgumentParser with the tools' formatter."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def device_type(value: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N."""
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def add_model(p: argparse.ArgumentParser, default: str | list[str], several: bool = False, what: str = "") -> None:
    """--model NAME (or, with ``several``, --model NAME [NAME ...], alias --models)."""
    names = ("--model", "--models") if several else ("--model",)
    p.add_argument(
        *names,
        dest="model",
        nargs="+" if several else None,
        default=default,
        metavar="NAME",
        help=(what or "registered model name(s)")
        + " (python -c 'import se_transfer.models as m; print(m.list_models())')",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda|cuda:N."""
    p.add_argument("--device", type=device_type, default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")


def add_amp(p: argparse.ArgumentParser) -> None:
    """--amp none|bf16|fp16 (default: bf16 on CUDA, none on the CPU)."""
    p.add_argument(
        "--amp", choices=AMP_CHOICES, default=None, help="autocast dtype (default: bf16 on CUDA, none on CPU)"
    )


def add_se_impl(p: argparse.ArgumentParser) -> None:
    """--se-impl auto|eager|triton."""
    p.add_argument(
        "--se-impl", choices=SE_IMPL_CHOICES, default="auto", help="how SE blocks run (auto: fused kernels on CUDA)"
    )


def add_timing(
    p: argparse.ArgumentParser, iters: int | None, warmup: int | None, rounds: int | None, unit: str
) -> None:
    """--warmup, --iters (alias --steps), --rounds of a benchmark."""
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed {unit} first")
    p.add_argument("--iters", "--steps", dest="iters", type=int, default=iters, help=f"timed {unit} per round")
    p.add_argument("--rounds", type=int, default=rounds, help="timed rounds (the median is reported)")


def add_json(p: argparse.ArgumentParser) -> None:
    """--json: a last line of JSON with every number."""
    p.add_argument("--json", action="store_true", help="end with one line of JSON holding every number")


def resolve_device(value: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; a CUDA device without a GPU is a usage error."""
    import torch

    from .errors import UsageError

    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {value}: no CUDA device is available")
    return value
