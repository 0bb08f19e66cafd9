"""Helpers shared by the tests."""

import torch


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so parity tests see them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def calibrate_batchnorm(model: torch.nn.Module, size: int = 96, batches: int = 3, seed: int = 0) -> torch.nn.Module:
    """Give a randomly initialised network the BN statistics of its own activations on random images, as training
    would: with the default 0/1 statistics a deep random ResNet's features explode, and a detector on them diverges."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, size, size, generator=g))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()
