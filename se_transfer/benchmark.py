"""Throughput of a model beside its baseline, timed side by side in one process: ``tools/benchmark.py``.

Both networks (and, with timm installed, timm's version of the SE model as a peer) are built, warmed up (and
compiled), then timed in alternating rounds so that clock, thermal and load drift hit them alike. Each round times
``iters`` consecutive iterations of one network: with CUDA events on a GPU, ``time.perf_counter`` on the CPU. The
reported time is the median over rounds. ``throughput_ratio`` (model images/s over baseline images/s) is the median
over rounds of the ratio measured within each round (baseline seconds / model seconds, timed back to back), so that
drift slower than a round cancels out; the record also keeps the quartiles of those per-round ratios
(``ratio_quartiles``, a measure of the noise) and the plain ratio of the two medians (``ratio_of_medians``).

An iteration is, for ``--mode inference``, one forward pass under ``torch.inference_mode`` in eval mode; for
``--mode train``, forward + cross-entropy + backward + SGD step in train mode. Inputs are random and already on the
device, so only the network is measured.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine.amp import AMP_DTYPES
from .engine.events import format_table
from .models import create_model
from .models.fast_se import set_se_impl
from .models.registry import model_entry

MODES = ("train", "inference")
# timm's counterparts of our SE models (timm's "seresnet50" etc. use the PyTorch-style stride in the 3x3).
TIMM_PEERS = {
    "se_resnet18": "seresnet18",
    "se_resnet34": "seresnet34",
    "se_resnet50": "seresnet50",
    "se_resnet101": "seresnet101",
    "se_resnet152": "seresnet152",
    "se_resnext50_32x4d": "seresnext50_32x4d",
    "se_resnext101_32x4d": "seresnext101_32x4d",
    "senet154": "legacy_senet154",
}


@dataclass
class Contender:
    """One network under test: its label, its step function and its timings (seconds per iteration)."""

    label: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)

    def images_per_second(self, batch_size: int) -> float:
        return batch_size / statistics.median(self.times)


def paired_ratio(model_times: Sequence[float], baseline_times: Sequence[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of baseline time / model time over rounds timed side by side."""
    if len(model_times) != len(baseline_times) or not model_times:
        raise ValueError(f"need one time per round from each side, got {len(model_times)} and {len(baseline_times)}")
    ratios = sorted(b / m for m, b in zip(model_times, baseline_times))
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def _timm_model(name: str, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def default_peer(model: str) -> str | None:
    """timm's counterpart of ``model`` when timm is installed and has it, else None."""
    name = TIMM_PEERS.get(model)
    if name is None:
        return None
    try:
        import timm
    except ImportError:
        return None
    return name if timm.is_model(name) else None


def make_step(
    model: nn.Module,
    mode: str,
    device: torch.device,
    batch_size: int,
    image_size: int,
    num_classes: int,
    amp: str,
    channels_last: bool,
    compile_mode: str | None,
) -> Callable[[], None]:
    """A closure running one iteration of ``model`` (see the module docstring) on fixed random inputs."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    model.train(mode == "train")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    fwd = torch.compile(model, mode=compile_mode) if compile_mode else model
    dtype = AMP_DTYPES[amp]

    if mode == "inference":

        def step() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                fwd(images)

        return step

    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(fwd(images), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def time_side_by_side(
    contenders: Sequence[Contender], device: torch.device, warmup: int, iters: int, rounds: int
) -> None:
    """Fill every contender's ``times`` with ``rounds`` per-iteration times, alternating the contenders."""
    for c in contenders:
        for _ in range(warmup):
            c.step()
    sync_device(device)
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]  # rotate who goes first
        for c in order:
            c.times.append(time_iters(c.step, device, iters))


def time_iters(step: Callable[[], None], device: torch.device, iters: int) -> float:
    """Seconds per iteration of ``iters`` back-to-back calls of ``step`` (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def run_benchmark(
    model: str,
    baseline: str,
    device: torch.device,
    batch_size: int,
    modes: Sequence[str],
    amp: str = "none",
    channels_last: bool = False,
    compile_mode: str | None = None,
    se_impl: str = "auto",
    peer: str | None = None,
    warmup: int = 3,
    iters: int = 2,
    rounds: int = 30,
) -> dict[str, Any]:
    """Time ``model`` beside ``baseline`` (and ``peer``, a timm model name) in each of ``modes``; return the record."""
    family = model_entry(model).family
    if model_entry(baseline).family != family:
        raise ValueError(f"{model!r} ({family}) and {baseline!r} ({model_entry(baseline).family}) take other inputs")
    image_size, num_classes = (224, 1000) if family == "imagenet" else (32, 10)
    results = []
    for mode in modes:
        torch.manual_seed(0)
        nets = {"model": set_se_impl(create_model(model, num_classes=num_classes), se_impl)}
        nets["baseline"] = create_model(baseline, num_classes=num_classes)
        if peer:
            nets["peer"] = _timm_model(peer, num_classes)
        labels = {"model": model, "baseline": baseline, "peer": f"timm:{peer}"}
        contenders = [
            Contender(
                labels[k],
                make_step(net, mode, device, batch_size, image_size, num_classes, amp, channels_last, compile_mode),
            )
            for k, net in nets.items()
        ]
        time_side_by_side(contenders, device, warmup, iters, rounds)
        ips = {k: c.images_per_second(batch_size) for k, c in zip(nets, contenders)}
        times = {k: c.times for k, c in zip(nets, contenders)}
        ratio, q1, q3 = paired_ratio(times["model"], times["baseline"])
        row: dict[str, Any] = {
            "mode": mode,
            "model_ips": ips["model"],
            "baseline_ips": ips["baseline"],
            "throughput_ratio": ratio,
            "ratio_quartiles": [q1, q3],
            "ratio_of_medians": ips["model"] / ips["baseline"],
        }
        if peer:
            ratio, q1, q3 = paired_ratio(times["peer"], times["baseline"])
            row["peer"] = {
                "name": labels["peer"],
                "ips": ips["peer"],
                "ratio_to_baseline": ratio,
                "ratio_quartiles": [q1, q3],
                "ratio_of_medians": ips["peer"] / ips["baseline"],
            }
        results.append(row)
        del contenders, nets
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "model": model,
        "baseline": baseline,
        "batch_size": batch_size,
        "image_size": image_size,
        "amp": amp,
        "channels_last": channels_last,
        "compile": compile_mode or False,
        "se_impl": se_impl,
        "timing": {"warmup": warmup, "iters": iters, "rounds": rounds},
        "results": results,
        "throughput_ratio": results[0]["throughput_ratio"]
        if len(results) == 1
        else {r["mode"]: r["throughput_ratio"] for r in results},
    }


def format_record(record: dict[str, Any]) -> str:
    """The human-readable table of a ``run_benchmark`` record."""
    head = (
        f"{record['model']} vs {record['baseline']}: batch {record['batch_size']}, {record['image_size']}px, "
        f"amp {record['amp']}, channels_last {record['channels_last']}, compile {record['compile']}, "
        f"se_impl {record['se_impl']}, {record['device']}, torch {record['torch']}"
    )
    rows = []
    for r in record["results"]:
        q = r["ratio_quartiles"]
        rows.append(
            [
                r["mode"],
                record["model"],
                f"{r['model_ips']:.1f}",
                f"{r['throughput_ratio']:.3f}x",
                f"{q[0]:.3f}-{q[1]:.3f}",
            ]
        )
        rows.append([r["mode"], record["baseline"], f"{r['baseline_ips']:.1f}", "1.000x", ""])
        if "peer" in r:
            p = r["peer"]
            q = p["ratio_quartiles"]
            rows.append(
                [r["mode"], p["name"], f"{p['ips']:.1f}", f"{p['ratio_to_baseline']:.3f}x", f"{q[0]:.3f}-{q[1]:.3f}"]
            )
    table = format_table(["mode", "network", "images/s", "vs baseline", "per-round quartiles"], rows)
    return head + "\n" + table


def benchmark_command(args: Any) -> int:
    """The body of tools/benchmark.py on its parsed arguments (see se_transfer.cli.tools.benchmark_main)."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)

    def pick(value: int | None, on_cuda: int, on_cpu: int) -> int:
        return value if value is not None else (on_cuda if cuda else on_cpu)

    batch_size = pick(args.batch_size, 256, 1)
    warmup, iters, rounds = pick(args.warmup, 10, 3), pick(args.iters, 10, 2), pick(args.rounds, 7, 30)
    if batch_size < 1 or iters < 1 or rounds < 1 or warmup < 0:
        raise ValueError("--batch-size, --iters and --rounds must be >= 1 and --warmup >= 0")
    peer_name = None if args.no_peer else (args.peer or default_peer(args.model))
    if args.peer:
        try:
            import timm
        except ImportError:
            raise ValueError("--peer needs timm (pip install timm)") from None
        if not timm.is_model(args.peer):
            raise ValueError(f"--peer: timm has no model {args.peer!r}")
    record = run_benchmark(
        args.model,
        args.baseline,
        device,
        batch_size,
        MODES if args.mode == "both" else (args.mode,),
        amp=args.amp or ("bf16" if cuda else "none"),
        channels_last=args.channels_last,
        compile_mode=args.compile_mode if args.compile else None,
        se_impl=args.se_impl,
        peer=peer_name,
        warmup=warmup,
        iters=iters,
        rounds=rounds,
    )
    print(format_record(record))
    if args.json:
        print(json.dumps(record))
    return 0
