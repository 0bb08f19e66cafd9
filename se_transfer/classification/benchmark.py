"""CIFAR training throughput, models side by side in one process: eager, compiled, compiled with CUDA graphs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..benchmark import device_name, sync_device
from ..data.cifar import CIFAR_MEAN, CIFAR_STD, CifarData, CifarInput, CifarLoader
from ..engine.amp import amp_dtype
from ..engine.events import format_table
from ..models import create_model

MODES = {"eager": None, "compiled": "default", "cudagraphs": "reduce-overhead"}


def _synthetic_cifar(n: int, num_classes: int = 10, seed: int = 0) -> CifarData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    classes = [str(i) for i in range(num_classes)]
    return CifarData(images=images, labels=labels, classes=classes, num_classes=num_classes)


def _make_step(
    name: str, mode: str, device: torch.device, amp: str, channels_last: bool, se_impl: str = "auto"
) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], nn.Module]:
    model = create_model(name, num_classes=10, se_impl=se_impl).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fwd = model if MODES[mode] is None else torch.compile(model, mode=MODES[mode])
    dtype = amp_dtype(amp, "--amp")

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(fwd(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, model


def benchmark(
    models: Sequence[str],
    modes: Sequence[str],
    device: torch.device,
    batch_size: int = 128,
    steps: int = 50,
    warmup: int = 15,
    rounds: int = 5,
    amp: str = "none",
    channels_last: bool = False,
    se_impl: str = "auto",
) -> list[dict]:
    """Images/s of a full training step (augmentation on the device included) for every model and mode."""
    n = max(batch_size * (steps + 1), 4096) if device.type == "cuda" else batch_size * (steps + 1)
    loader = CifarLoader(
        _synthetic_cifar(n),
        batch_size=batch_size,
        train=True,
        device=device,
        seed=0,
        inputs=CifarInput(mean=CIFAR_MEAN["cifar10"], std=CIFAR_STD["cifar10"], channels_last=channels_last),
    )
    results = []
    for mode in modes:
        steps_fns = {m: _make_step(m, mode, device, amp, channels_last, se_impl)[0] for m in models}
        times: dict[str, list[float]] = {m: [] for m in models}
        for fn in steps_fns.values():  # warm-up (and compilation) outside the timed windows
            for images, labels in _take(loader, warmup):
                fn(images, labels)
        sync_device(device)
        for r in range(rounds):  # alternate the models so that clock and thermal drift hit both alike
            for m, fn in steps_fns.items():
                batches = list(_take(loader, steps, epoch=r + 1))
                sync_device(device)
                t0 = time.perf_counter()
                for images, labels in batches:
                    fn(images, labels)
                sync_device(device)
                times[m].append(time.perf_counter() - t0)
        for m in models:
            results.append({"model": m, "mode": mode, "ims_per_sec": batch_size * steps / statistics.median(times[m])})
    return results


def _take(loader: CifarLoader, k: int, epoch: int = 0):
    it = loader.epoch_iter(epoch)
    for _ in range(k):
        try:
            yield next(it)
        except StopIteration:
            epoch += 1
            it = loader.epoch_iter(epoch)
            yield next(it)


def benchmark_cifar_command(args: Any) -> int:
    """The body of tools/benchmark_cifar.py on its parsed arguments (see se_transfer.cli.tools)."""
    device = torch.device(args.device)
    models = list(args.model)
    modes = args.modes or (list(MODES) if device.type == "cuda" else ["eager"])
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    results = benchmark(
        models,
        modes,
        device,
        args.batch_size,
        args.iters,
        args.warmup,
        args.rounds,
        amp,
        args.channels_last,
        args.se_impl,
    )
    base = {r["mode"]: r["ims_per_sec"] for r in results if r["model"] == models[0]}
    for r in results:
        r["ratio_to_first"] = r["ims_per_sec"] / base[r["mode"]]
    name = device_name(device)
    print(
        f"CIFAR training step, batch {args.batch_size}, amp {amp}, channels_last {args.channels_last}, "
        f"se_impl {args.se_impl}, {name}"
    )
    rows = [[r["model"], r["mode"], f"{r['ims_per_sec']:.0f}", f"{r['ratio_to_first']:.2f}x"] for r in results]
    print(format_table(["model", "mode", "images/s", f"vs {models[0]}"], rows))
    if args.json:
        record = {"device": name, "batch_size": args.batch_size, "amp": amp, "se_impl": args.se_impl}
        print(json.dumps({**record, "results": results}))
    return 0
