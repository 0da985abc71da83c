"""Parity: layer-by-layer comparison of native models with their references, and SSIM checks."""
