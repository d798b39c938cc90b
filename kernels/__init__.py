"""Triton kernels of mlrb, importable as ``mlrb.kernels``.

This package stays light on import: the kernel modules import triton themselves, so
``import mlrb`` never pays for (or requires) triton.

- layout.py: every number of the layout: loss-type slots and the bits of the selection
  mask SEL, output columns, box radii, workspace planes, geometry-table columns,
  partial-sum slots (no triton);
- launch.py: the launch hook that counts every launch (no triton);
- loss_math.py: every per-pixel formula beside its derivative;
- tiling.py: which pixels a program owns, how it reads them, where a type's count sits;
- pyramid.py: the bicubic pyramid (forward) and its transpose (backward);
- box.py: box filters by carried prefix sums, and their transposes;
- loss_space_fwd.py / loss_space_bwd.py: the losses and their gradients at every scale;
- reduce.py: fixed-order reduction of the partial sums into the losses.
The host side (planning, launches, custom ops) is mlrb/ops/triton.py.
"""
