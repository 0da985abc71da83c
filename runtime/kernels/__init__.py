"""Fused kernels for the runtime's hot paths (Triton on CUDA, PyTorch reference elsewhere)."""
