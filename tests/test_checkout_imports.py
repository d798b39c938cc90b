"""A checkout's root on sys.path (``python -m pytest`` or ``python -m mlrb`` run there) makes
its folder kernels/ importable as a top-level ``kernels``. That name belongs to a PyPI
package (Hugging Face's ``kernels``, which transformers >= 5 imports when it is installed):
the folder must hand the name over to it, not shadow it."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "kernels", "__init__.py")


def run_at_root(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose sys.path starts with the checkout's root."""
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(code)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not installed("kernels"), reason="no package `kernels` installed (the next test covers that)")
def test_top_level_kernels_is_the_installed_package_not_the_folder():
    r = run_at_root("""
        import kernels, mlrb.kernels
        print(kernels.__file__)
        print(mlrb.kernels.__file__)
    """)
    assert r.returncode == 0, r.stderr
    top, ours = r.stdout.split()
    assert os.path.realpath(top) != os.path.realpath(OURS)
    assert os.path.realpath(ours) == os.path.realpath(OURS)


def test_without_the_package_the_name_is_missing_and_says_so():
    # the root stays on sys.path, everything that could hold another `kernels` goes
    r = run_at_root("""
        sys.path[:] = [sys.path[0]] + [p for p in sys.path[1:] if "-packages" not in p]
        try:
            import kernels
        except ModuleNotFoundError as exc:
            print(exc.name, "|", exc)
            print("kernels" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith("kernels |") and "mlrb.kernels" in first
    assert second == "False"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_transformers_imports_its_trainer_from_the_checkout_root():
    r = run_at_root("from transformers import Trainer, TrainingArguments; print(Trainer.__name__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "Trainer"
