"""Triton kernels of mlrb, importable as ``mlrb.kernels``.

This package stays light on import: the kernel modules import triton themselves, so
``import mlrb`` never pays for (or requires) triton.
"""
