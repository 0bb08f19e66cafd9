"""torch.distributed helpers: process launch (one process per device, several machines), rank queries, reductions.

Two ways in: ``launch`` (what ``tools/train_net.py --num-gpus N [--num-machines M --machine-rank R --dist-url U]``
uses, detectron2's convention) spawns the local processes itself; under ``torchrun`` the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is read instead. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def is_dist() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """Whether this is rank 0, which writes logs, metrics and checkpoints."""
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes (no-op when alone)."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place, and return it."""
    if is_dist() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every process (a one-element list when alone)."""
    if not (is_dist() and get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    """Whether the environment of torchrun (or another launcher) describes the process group."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def init_from_env(device_type: str) -> int:
    """Join the process group described by torchrun's environment; return the local rank."""
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if int(os.environ["WORLD_SIZE"]) > 1 and not is_dist():
        dist.init_process_group(_backend(device_type), timeout=timedelta(minutes=30))
    return local_rank


def _worker(
    local_rank: int,
    main_fn: Callable[..., Any],
    procs_per_machine: int,
    machine_rank: int,
    world_size: int,
    dist_url: str,
    device_type: str,
    args: tuple,
) -> None:
    rank = machine_rank * procs_per_machine + local_rank
    os.environ.update(LOCAL_RANK=str(local_rank), RANK=str(rank), WORLD_SIZE=str(world_size))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    else:  # CPU processes share the machine's cores: oversubscribed OpenMP threads slow everything down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs_per_machine))
    dist.init_process_group(
        _backend(device_type), init_method=dist_url, world_size=world_size, rank=rank, timeout=timedelta(minutes=30)
    )
    try:
        synchronize()
        main_fn(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_fn: Callable[..., Any],
    procs_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    device_type: str = "cuda",
    args: tuple = (),
) -> None:
    """Run ``main_fn(*args)`` in ``procs_per_machine`` processes on each of ``num_machines`` machines."""
    world_size = procs_per_machine * num_machines
    if world_size == 1:
        main_fn(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if device_type == "cuda" and procs_per_machine > torch.cuda.device_count():
        raise ValueError(f"{procs_per_machine} processes asked for, but {torch.cuda.device_count()} GPUs are visible")
    # When one process fails the others are ended; torch warns about each. The failure itself is reported by the caller.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    mp.start_processes(
        _worker,
        nprocs=procs_per_machine,
        args=(main_fn, procs_per_machine, machine_rank, world_size, dist_url, device_type, args),
        daemon=False,
        start_method="spawn",
    )
