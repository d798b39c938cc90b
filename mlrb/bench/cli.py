"""``mlrb bench``: time the loss-space formulations against a single L1 loss.

Providers: paper (the paper's public code, one tensor op per loss), torch (best pure
PyTorch), torch_compile, fused (mlrb.fused_loss_space: C++/OpenMP on cpu, Triton on cuda)
and l1 (one L1 loss, the unit). Modes: forward, forward+backward.

--device cuda changes only the clock (CUDA events by default) and adds the loss sets of
the paper's Table 7 ({D0}, L^3|L^4|L^5, all); --select times one set of your own instead.

`mlrb bench floor --help`: the floor model of the fused CPU kernels (mlrb/bench/floor.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Iterable

import torch

from mlrb.bench import cases, timers
from mlrb.bench.table import Row, format_rows
from mlrb.names import resolve_select

REPEAT = {"cpu": 10, "cuda": 20}  # default --repeat
PAPER_REPEAT = {"cpu": 3, "cuda": 5}  # at most this many calls of the slow "paper" provider


def run_bench(shapes: Iterable[str] = ("paper",), providers: Iterable[str] = cases.PROVIDERS,
              sets: Iterable[str] = ("all",), modes: Iterable[str] = cases.MODES, repeat: int = 10,
              device="cpu", clock: str | None = None, progress: bool = True, rounds: int = 1) -> list[Row]:
    """Time every (shape, mode, loss set, provider) on ``device`` with ``clock`` (default:
    timers.default_clock). ``shapes``: names of cases.SHAPES or "BxCxHxW[@density]";
    ``sets``: keys of cases.SETS or selection strings. The l1 provider ignores the set.

    ``rounds``: the providers of one (shape, mode, set) are timed in turn, ``repeat`` calls
    each, ``rounds`` times over; best and median are over all their calls. On a machine
    whose speed drifts (a shared VM), every provider then samples the same spells, so the
    ratios between them hold better than with all of one provider's calls in a row."""
    from tqdm import tqdm

    if rounds < 1 or repeat < 1:
        raise ValueError(f"rounds and repeat must be >= 1, got rounds={rounds}, repeat={repeat}")
    device = torch.device(device)
    providers = list(providers)
    timer = timers.make_timer(clock or timers.default_clock(device), device)
    groups = [(s, m, ls) for s in shapes for m in modes for ls in sets]
    rows: list[Row] = []
    current: dict = {}
    bar = tqdm(total=len(groups) * len(providers) * rounds, desc=f"mlrb bench ({device.type})",
               disable=not progress)
    for shape, mode, loss_set in groups:
        if shape not in current:  # one case in memory at a time
            current = {shape: cases.make_case(cases.parse_shape(shape), device)}
        pred, gt, mask = current[shape]
        steps = {p: cases.step_fn(cases.provider_fn(p, cases.loss_set(loss_set), device), mode, pred, gt, mask)
                 for p in providers}
        times: dict = {p: [] for p in providers}
        for r in range(rounds):
            for provider in providers:
                n = min(repeat, PAPER_REPEAT[device.type]) if provider == "paper" else repeat
                # one untimed call per round (caches after the other providers), compiling first
                warmup = 1 + (r == 0) * (("compile" in provider) + (device.type == "cuda"))
                times[provider] += timer(steps[provider], n, warmup=warmup)
                bar.update()
        rows += [Row(cases.shape_label(cases.parse_shape(shape)), mode, loss_set, p, min(times[p]),
                     statistics.median(times[p])) for p in providers]
    bar.close()
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlrb bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", default=None,
                   help=f"{', '.join(cases.SHAPES)} or BxCxHxW[@mask density]; repeatable (default: paper)")
    p.add_argument("--mode", choices=(*cases.MODES, "both"), default="both")
    p.add_argument("--providers", default=",".join(cases.PROVIDERS),
                   help="comma-separated subset of " + ",".join(cases.PROVIDERS))
    p.add_argument("--select", default=None, help="one loss set to time (default: all 78; on cuda the Table 7 sets)")
    p.add_argument("--sets", default=None,
                   help="comma-separated loss sets: " + ", ".join(cases.SETS) + " or selections separated by ';' "
                        "(default: all; on cuda all three Table 7 sets)")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"timed calls per provider (default {REPEAT['cpu']}, cuda {REPEAT['cuda']}; "
                        f"paper: at most {PAPER_REPEAT['cpu']}, cuda {PAPER_REPEAT['cuda']})")
    p.add_argument("--rounds", type=int, default=1,
                   help="time the providers in turn, --repeat calls each, this many times over (default 1); "
                        "on a machine whose speed drifts, 5 keeps the ratios between providers steadier")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    p.add_argument("--clock", choices=timers.CLOCKS, default=None,
                   help="wall time; cpu: the CPU time of the calling thread (on cpu it needs --threads 1, on "
                        "cuda it is the host's cost of enqueuing a call); cuda: CUDA events "
                        "(default: cuda on --device cuda, else wall)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _sets(args) -> list[str]:
    if args.select is not None:
        return [args.select]
    if args.sets is not None:
        sep = ";" if ";" in args.sets else ","
        return [s.strip() for s in args.sets.split(sep) if s.strip()]
    return list(cases.SETS) if args.device == "cuda" else ["all"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mlrb bench``; prints the tables of times and ratios."""
    parser = _parser()
    args = parser.parse_args(argv)
    repeat = REPEAT[args.device] if args.repeat is None else args.repeat
    if repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    sets = _sets(args)
    for s in sets:
        try:
            resolve_select(cases.loss_set(s))
        except ValueError as exc:
            parser.error(f"{'--select' if args.select is not None else '--sets'}: {exc}")
    try:
        providers = cases.check_providers(args.providers.split(","))
    except ValueError as exc:
        parser.error(f"--providers: {exc}")
    try:
        shapes = [cases.parse_shape(s) for s in (args.shape or ["paper"])]
    except ValueError as exc:
        parser.error(str(exc))
    modes = cases.MODES if args.mode == "both" else (args.mode,)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mlrb bench: --device cuda needs a CUDA GPU, and torch sees none "
              f"(torch {torch.__version__}, cuda {torch.version.cuda}); run with --device cpu.", file=sys.stderr)
        return 2
    clock = args.clock or timers.default_clock(args.device)
    if clock == "cpu" and args.device == "cpu" and (args.threads or torch.get_num_threads()) != 1:
        parser.error("--clock cpu measures the calling thread only: on cpu use it with --threads 1")
    try:
        timers.make_timer(clock, args.device)
    except ValueError as exc:
        parser.error(f"--clock: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu threads={torch.get_num_threads()}"
    calls = f"{args.rounds} rounds of --repeat calls" if args.rounds > 1 else "--repeat calls"
    print(f"mlrb bench: device={where} torch={torch.__version__} clock={clock}; "
          f"best and median of {calls}, ms")
    rows = run_bench([cases.shape_label(s) for s in shapes], providers, sets, modes, repeat,
                     args.device, clock, progress=not args.no_progress, rounds=args.rounds)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
