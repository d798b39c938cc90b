"""Benchmarks of the loss space (``mlrb bench``, bench/*.py).

- cases.py: shapes, providers, loss sets (the paper's Table 7), inputs, the step function;
- timers.py: wall time, the thread CPU time, CUDA events (one interface, no fallbacks);
- memory.py: saved-for-backward bytes and the backward's large allocations;
- table.py: result rows and the table printer with ratios vs l1 and vs fused;
- cli.py: ``mlrb bench`` (``--device cuda`` only changes the timer and adds the Table 7 sets);
- floor.py: ``mlrb bench floor``, the floor model of the fused CPU kernels (work per stage,
  the machine's peaks, the measured fraction of the floor).
"""
import sys


def main(argv: list[str] | None = None) -> int:
    """``mlrb bench`` (mlrb.bench.cli.main), or ``mlrb bench floor ...`` (mlrb.bench.floor.main)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["floor"]:
        from mlrb.bench.floor import main as floor_main

        return floor_main(argv[1:])
    from mlrb.bench.cli import main as cli_main

    return cli_main(argv)
