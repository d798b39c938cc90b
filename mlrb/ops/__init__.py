"""Fused backends of the loss space, registered as torch custom ops.

cpu.py: C++/OpenMP kernels of csrc/ (extension mlrb._C); triton.py: Triton kernels of
kernels/ (mlrb.kernels). Each exposes ``unavailable_reason(device)`` and ``loss_space(...)``
for the dispatcher in mlrb/loss_space.py.
"""
