"""Test-wide setup.

Triton kernels are exercised on CPU tensors through the Triton interpreter when no GPU is
present; TRITON_INTERPRET must be set before anything imports triton, hence here.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
