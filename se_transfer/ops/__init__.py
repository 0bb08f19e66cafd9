"""Fused SE operators: Triton kernels for CUDA (``fused_se``) and the native CPU excitation (``cpu_gate``, compiled
on first use). Importing this package needs neither Triton, nor a GPU, nor a C compiler."""

from .fused_se import can_run, se_scale_residual, se_scale_residual_reference, triton_available

__all__ = ["can_run", "se_scale_residual", "se_scale_residual_reference", "triton_available"]
