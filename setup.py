"""Build script: the Python package plus the pybind11 CPU extension ``mlrb._C``.

The extension links against nothing from torch: kernels read raw buffers handed over as
numpy views of CPU tensors, so the build needs only pybind11 and a C++17 compiler with
OpenMP (see pyproject.toml; torch must never become a build requirement).
"""
import glob
import os
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

# The extension's sources compile in parallel (one job per CPU; MLRB_BUILD_JOBS=N sets N):
# the two kernel files take most of the build, and setuptools alone compiles one at a time.
# pybind11 would meet a bad value with a traceback in the middle of the build: one line here.
_jobs = os.environ.get("MLRB_BUILD_JOBS", "").strip()
if _jobs and not _jobs.isdigit():
    sys.exit(f"setup.py: MLRB_BUILD_JOBS must be a whole number of compile jobs (0: one per CPU), got {_jobs!r}")
ParallelCompile("MLRB_BUILD_JOBS").install()

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
# -fno-wrapv undoes the -fwrapv that Python's own CFLAGS add: with signed overflow defined,
# GCC leaves several index loops of the kernels scalar (about 20% of their time).
# -ffp-contract=off: no FMA contraction, so results keep the rounding of the reference.
sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
ext_modules = [
    Pybind11Extension(
        "mlrb._C",
        sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fno-wrapv", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"] + openmp,
        extra_link_args=openmp,
    )
] if sources else []

setup(
    packages=find_packages(include=["mlrb", "mlrb.*"]) + ["mlrb.kernels"],
    # Triton kernels live in the top-level kernels/ folder (product layout) and install
    # as the subpackage mlrb.kernels.
    package_dir={"mlrb": "mlrb", "mlrb.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
