"""The run folder of ``mlrb train``: never start a new run over an existing one.

A folder that holds any file of a run (run.json, summary.json, a checkpoint, a log or a
report) belongs to that run, even an interrupted one that has not logged a period yet: a
new run there is refused unless it resumes (``--resume auto`` or ``--resume PATH`` with a
checkpoint of that folder; another run's checkpoint continues in a new folder). The
folder must also be writable, which is checked before anything is built.
"""
from __future__ import annotations

import os

from mlrb.errors import UserError

# Files and folders a run writes into its folder.
RUN_FILES = ("run.json", "summary.json", "periods.jsonl", "metrics.jsonl", "losses.csv", "weights.csv",
             "contributions.csv", "checkpoints", "report")


class RunFolderError(UserError, ValueError):
    """The run folder holds another run, or cannot be created or written."""


def run_files(run_dir: str) -> list[str]:
    """The run files present in ``run_dir`` (an empty ``checkpoints/`` or ``report/`` does not count)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            if any(os.scandir(path)):
                found.append(name + "/")
        elif os.path.exists(path):
            found.append(name)
    return found


def check_run_folder(run_dir: str, resume: str | None) -> str | None:
    """Validate ``run_dir`` for a new run (``resume`` None) or a resumed one; returns the
    checkpoint to load (None: start from scratch). Raises RunFolderError."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunFolderError(f"--out {run_dir}: exists and is not a folder")
    _check_writable(run_dir)
    found = run_files(run_dir) if os.path.isdir(run_dir) else []
    if not resume:
        if found:
            raise RunFolderError(f"--out {run_dir} already holds a run ({', '.join(found)}); resume it with "
                                 f"--resume auto, or choose another --out")
        return None
    if resume != "auto":
        if found and not _inside(resume, run_dir):
            # Continuing another run here would overwrite this one's logs and checkpoints.
            raise RunFolderError(f"--out {run_dir} already holds a run ({', '.join(found)}) and --resume {resume} "
                                 f"is not one of its checkpoints; resume that run into a new --out (or its own)")
        return resume
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    if os.path.exists(last):
        return last
    if found:
        # Files of a run but no checkpoint to continue from: starting over would overwrite them.
        others = [f for f in found if f != "checkpoints/"]
        extra = ""
        if "checkpoints/" in found:
            names = sorted(f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if f.endswith(".pt"))
            if names:
                extra = f"; resume from one of checkpoints/{', checkpoints/'.join(names)} with --resume PATH"
        raise RunFolderError(f"--out {run_dir} holds a run ({', '.join(others or found)}) but no "
                             f"checkpoints/last.pt to resume from{extra}; or choose another --out")
    return None  # --resume auto in a new folder: a fresh run


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _check_writable(run_dir: str) -> None:
    # The nearest folder that exists must let us create (or write into) the run folder.
    probe = os.path.abspath(run_dir)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise RunFolderError(f"--out {run_dir}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "write into" if probe == os.path.abspath(run_dir) else f"create it in {probe}"
        raise RunFolderError(f"--out {run_dir}: not writable (cannot {what}: permission denied)")
