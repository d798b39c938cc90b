"""Issue 17 targets of the fused CPU kernels, single-threaded (thread CPU time), measured in
one run: at least 70% of the floor model (`mlrb bench floor`), forward and backward
separately, and forward+backward of all 78 losses at most 8x one L1 loss forward+backward,
at the paper, NYUv2 and KITTI shapes. Run: ``pytest bench/test_bench_floor.py -s``.

Timing targets are reported (printed), never asserted: the shared machines this runs on
swing by up to 5x between runs; compare numbers of one run only.
"""
from __future__ import annotations

import pytest

from mlrb.bench import cases as B
from mlrb.bench import floor
from mlrb.bench.cli import run_bench

SHAPES = ("paper", "nyu", "kitti")
FRACTION_TARGET, L1_RATIO_TARGET = 0.70, 8.0


@pytest.mark.parametrize("shape", SHAPES)
def test_bench_fraction_of_the_floor(shape, capsys, one_thread):
    r = floor.run(shape, "all", repeat=10)
    lines = [f"{r['shape']}, all 78, {r['cpu']['model']}, isa={r['isa']}, 1 thread, thread CPU time:"]
    for p, name in floor.PASS_NAMES.items():
        m = r["passes"][p]
        lines.append(f"  {name}: floor {m['floor_ms']:.2f} ms, measured {m['measured_ms']:.2f} ms, "
                     f"fraction {m['fraction']:.2f} (target >= {FRACTION_TARGET}; the {r['rounds']} rounds' "
                     f"best {min(m['rounds_ms']):.2f}-{max(m['rounds_ms']):.2f} ms)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert all(0 < r["passes"][p]["fraction"] for p in floor.PASS_NAMES)
    assert all(r["passes"][p]["measured_ms"] == min(r["passes"][p]["rounds_ms"]) for p in floor.PASS_NAMES)


@pytest.mark.parametrize("shape", SHAPES)
def test_bench_fused_vs_one_l1_single_thread(shape, capsys, one_thread):
    # the two in turn, 6 calls each, 5 rounds (mlrb bench --rounds): both sample the same spells
    rows = run_bench([shape], ["l1", "fused"], ["all"], ["forward+backward"], repeat=6, device="cpu", clock="cpu",
                     progress=False, rounds=5)
    best = {r.provider: r.best_s for r in rows}
    ratio = best["fused"] / best["l1"]
    with capsys.disabled():
        print(f"\n  {B.shape_label(B.SHAPES[shape])} forward+backward, 1 thread, CPU time: fused "
              f"{best['fused'] * 1e3:.2f} ms, l1 {best['l1'] * 1e3:.2f} ms, fused / l1 = {ratio:.1f}x "
              f"(target <= {L1_RATIO_TARGET:g}x)")
    assert ratio > 1  # 78 losses cannot cost less than one
