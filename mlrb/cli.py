"""``mlrb`` command line: one subcommand per module, each with its own argparse.

Every subcommand module exposes ``main(argv: list[str] | None) -> int``; this file only
dispatches, so new commands never touch each other's code.
"""
from __future__ import annotations

import importlib
import sys

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
    return int(module.main(rest) or 0)
