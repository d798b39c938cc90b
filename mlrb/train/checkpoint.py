"""Checkpoint files of a run: written atomically, read with an error that says what to do.

A checkpoint is first written to ``<name>.tmp`` in the same folder, flushed and fsynced,
then renamed over ``<name>`` (``os.replace`` is atomic on POSIX and Windows) and the folder
is fsynced so the rename itself survives a power cut. A process killed at any moment
therefore leaves either the previous complete checkpoint or the new complete one, never a
truncated ``last.pt`` (at worst a stale ``.tmp``, which the next save overwrites).
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch

from mlrb.errors import UserError

CHECKPOINT_FORMAT = "mlrb-train-1"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, truncated or belongs to another run's settings."""


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` so that ``path`` is never seen half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Keep the previous checkpoint; drop the partial one (also on Ctrl-C).
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Persist the rename (the folder entry); not possible on Windows, where rename is durable enough.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def other_checkpoints(path: str) -> list[str]:
    """The other ``*.pt`` files next to ``path`` (e.g. checkpoints/epoch003.pt), sorted."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return []
    me = os.path.basename(path)
    return sorted(os.path.join(os.path.dirname(path), f) for f in os.listdir(folder)
                  if f.endswith(".pt") and f != me and os.path.isfile(os.path.join(folder, f)))


def _alternatives(path: str, option: str) -> str:
    others = other_checkpoints(path)
    if not others:
        return "no other checkpoint is in its folder"
    shown = ", ".join(others[-5:]) + (f" (and {len(others) - 5} older)" if len(others) > 5 else "")
    return f"other checkpoints: {shown}; give one with {option} PATH"


def read_checkpoint(path: str, option: str = "--resume") -> dict:
    """Load a training checkpoint on the CPU; CheckpointError names the file and the
    checkpoints next to it (to pass with ``option``) if it is missing, empty, truncated or
    not an mlrb checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found ({_alternatives(path, option)})")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes); {_alternatives(path, option)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # the file itself (permissions, ...): the command names it
        # (a zip cut short can also fail its seek, as an OSError without a file name)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({reason}); "
                              f"{_alternatives(path, option)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mlrb training checkpoint (no {CHECKPOINT_FORMAT!r} "
                              f"format tag); {_alternatives(path, option)}")
    return state
