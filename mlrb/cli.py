"""``mlrb`` command line: one subcommand per module, each with its own argparse.

Every subcommand module exposes ``main(argv: list[str] | None) -> int``; this file only
dispatches, so new commands never touch each other's code. It also reports, for every
command, what is the user's doing rather than a bug as one line without a traceback: a
:class:`mlrb.errors.UserError`, an operating-system error on a named file (missing,
unreadable, not writable, disk full), an allocation too large for the machine and Ctrl-C.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

from mlrb.errors import UserError, one_line

COMMANDS = {
    "demo": ("mlrb.demo", "print the 78 losses of a synthetic pred/gt pair and the gradient norm"),
    "bench": ("mlrb.bench", "time the loss-space backends against a single L1 loss"),
    "train": ("mlrb.train.cli", "train a depth estimator with the fused loss space and rebalancing"),
    "time": ("mlrb.train.timing", "seconds per training iteration for the Table 7 loss sets"),
    "report": ("mlrb.train.report", "plots and tables from a training run's logs"),
    "eval": ("mlrb.metrics.evaluate", "evaluate a folder of predictions against ground truth"),
    "diw": ("mlrb.metrics.diw", "WHDR of a prediction folder on DIW's annotation CSV (threshold sweep)"),
    "fuse": ("mlrb.relative.fuse_cli", "fit and evaluate ODE + RDE fusion of two training runs (supplement S-3)"),
}


def _usage() -> str:
    lines = ["usage: mlrb COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'mlrb COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mlrb: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_command(f"mlrb {name}", module.main, rest)


def run_command(prog: str, main, argv: list[str]) -> int:
    """``main(argv)``, with user errors, file errors and Ctrl-C as one line on stderr."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `mlrb eval ... | head`: the reader is gone, nothing to report
        try:  # so the interpreter's final flush of stdout does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"{prog}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        what = _allocation_failure(exc)
        if what is None:
            raise
        print(f"{prog}: error: out of memory ({what}); give smaller sizes, batches or counts", file=sys.stderr)
        return 1


def _allocation_failure(exc: BaseException) -> str | None:
    """The allocator's words if ``exc`` is a failed allocation (sizes too large for the
    machine, a user's choice), else None. torch's CPU allocator raises a RuntimeError, CUDA
    its OutOfMemoryError (a RuntimeError), Python a MemoryError."""
    text = one_line(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" \
            or "can't allocate memory" in text:
        return re.sub(r"^\[enforce fail at [^\]]*\] [^.]*\. ", "", text)[:300]
    return None
