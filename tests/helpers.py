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
