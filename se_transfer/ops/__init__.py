"""Fused GPU operators (Triton). Importing this package needs neither Triton nor a GPU."""

from .fused_se import can_run, se_scale_residual, se_scale_residual_reference, triton_available

__all__ = ["can_run", "se_scale_residual", "se_scale_residual_reference", "triton_available"]
