"""Benchmark results as rows, printed as one table per (shape, mode, loss set) with each
provider's best time relative to the l1 unit and to the fused kernels."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    shape: str
    mode: str
    loss_set: str
    provider: str
    best_s: float
    median_s: float

    @property
    def best_ms(self) -> float:
        return self.best_s * 1e3

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def format_rows(rows: list[Row]) -> str:
    """The tables, in the order the rows came; "-" where l1 or fused was not timed."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.shape, r.mode, r.loss_set), {})[r.provider] = r
    lines = []
    for (shape, mode, loss_set), by in groups.items():
        lines.append(f"\n{shape}  {mode}  losses={loss_set}")
        lines.append(f"  {'provider':<14}{'best ms':>10}{'median ms':>11}{'x l1':>9}{'x fused':>10}")
        for name, r in by.items():
            rel_l1 = f"{r.best_s / by['l1'].best_s:9.2f}" if "l1" in by else f"{'-':>9}"
            rel_f = f"{r.best_s / by['fused'].best_s:10.2f}" if "fused" in by else f"{'-':>10}"
            lines.append(f"  {name:<14}{r.best_ms:10.3f}{r.median_ms:11.3f}{rel_l1}{rel_f}")
    return "\n".join(lines)
