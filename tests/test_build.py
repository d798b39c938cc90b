"""The build script's own checks: a user's bad build setting is one line, not a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("jobs, ok", [("two", False), ("-1", False), ("1.5", False), ("2", True), ("", True)])
def test_bad_build_jobs_is_one_line_naming_the_variable(jobs, ok):
    # --name only evaluates setup.py (no compiling), which is where the value is checked
    r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "MLRB_BUILD_JOBS": jobs})
    if ok:
        assert r.returncode == 0 and r.stdout.strip().endswith("mlrb"), r.stderr
    else:
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert f"MLRB_BUILD_JOBS must be a whole number of compile jobs (0: one per CPU), got {jobs!r}" in r.stderr
