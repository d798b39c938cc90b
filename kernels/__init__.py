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

if __name__ == "kernels":
    # Imported as a top-level ``kernels``: a checkout's root is on sys.path (``python -m ...``
    # or pytest run there), and this folder would shadow the PyPI package ``kernels``
    # (Hugging Face's, which transformers imports when it is installed). Hand the name over
    # to that package, or say that there is none.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:  # the import system then drops sys.modules["kernels"]
        raise ModuleNotFoundError(f"No module named 'kernels' (the folder {os.path.dirname(__file__)} is mlrb's "
                                  "Triton kernels, importable as mlrb.kernels only)", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # what the import statement returns
    _spec.loader.exec_module(_module)
