"""``mlrb report RUN_DIR``: the paper's analysis figures from a training run's period logs.

Reads RUN_DIR/periods.jsonl (one line per period: mean losses L_i^(t), the weights used and
the contributions w_i * L_i^(t)) and writes to RUN_DIR/report/:

- contributions.png  (Fig. 3) each loss's share w_i L_i / sum_j w_j L_j of the overall loss
  over the periods (heat map), and per epoch as circles on the Fig. 2 plane, red where the
  share grew since the previous epoch, blue where it shrank, green where unchanged.
- pca.png            (Fig. 2) the trajectories t_i (loss i over the periods) projected on
  their two principal axes, by loss type (a) and by scale (b). Each t_i is standardised
  first (zero mean, unit variance), so the plane compares how the losses move, not their
  magnitudes — the same geometry as the correlation matrix.
- correlation.png    (Fig. S-2) correlation coefficients between the trajectories, losses
  grouped by type, boxes around same-type blocks.
- difficulty.csv / difficulty.md  (Table S-1) the reduction of each loss,
  -w_i^(0) (L_i^(T) - L_i^(0)) (Eq. S-1 with the sign of a reduction), divided by the
  magnitude of D@0's reduction (D@0 = 1 as in the supplement, or -1 if D@0 grew, so signs
  keep their meaning; the largest |reduction| if D@0 was not logged or did not change);
  higher = easier.
  w^(0) are the weights of the initialization, L^(0) the first period's losses and L^(T)
  the last period's. The supplement measures it with lambda = 0 (no rebalancing).

The tables need only numpy; the figures need matplotlib (``pip install mlrb[report]``).
A run too short for a part (Table S-1 needs 2 periods, Figs. 2 and S-2 need 3) gets the
other parts, and the skipped ones are listed with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mlrb.names import LOSS_TYPES, NUM_SCALES
from mlrb.errors import UserError

_MARKERS = ("o", "s", "^", "D", "v", "P")


class ReportError(UserError, RuntimeError):
    """The run folder lacks what a report needs."""


def load_run(run_dir: str) -> dict:
    """Names and per-period arrays (T, n): losses, weights_used, weights, contributions."""
    path = os.path.join(run_dir, "periods.jsonl")
    if not os.path.isfile(path):
        raise ReportError(f"{path} not found: is {run_dir} a run folder written by mlrb train?")
    records = []
    with open(path) as fh:
        lines = fh.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                continue  # the line being written (a running or killed run): not a period yet
            raise ReportError(f"{path}:{lineno}: not JSON ({exc})") from None
        _check_record(rec, records[0] if records else None, f"{path}:{lineno}")
        records.append(rec)
    if not records:
        raise ReportError(f"{path} has no periods yet")
    names = None
    info_path = os.path.join(run_dir, "run.json")
    if os.path.isfile(info_path):
        with open(info_path) as fh:
            try:
                info = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ReportError(f"{info_path}: not JSON ({exc})") from None
        names = info.get("names") if isinstance(info, dict) else None
    n = len(records[0]["losses"])
    if names is None or len(names) != n:
        names = [f"loss{i}" for i in range(n)]
    run = {"names": list(names), "records": records}
    for key in ("losses", "weights_used", "weights", "contributions"):
        run[key] = np.asarray([r[key] for r in records], dtype=np.float64)
    run["epoch"] = np.asarray([r["epoch"] for r in records])
    run["lambda"] = [r.get("lambda") for r in records]
    return run


def _check_record(rec, first: dict | None, where: str) -> None:
    keys = ("losses", "weights_used", "weights", "contributions")
    if not isinstance(rec, dict) or "epoch" not in rec or any(not isinstance(rec.get(k), list) for k in keys):
        raise ReportError(f"{where}: not a period record of mlrb train (needs epoch, {', '.join(keys)})")
    n = len(first["losses"]) if first else len(rec["losses"])
    if any(len(rec[k]) != n for k in keys) or n == 0:
        raise ReportError(f"{where}: expected {n} values per list, got "
                          + ", ".join(f"{k} {len(rec[k])}" for k in keys))
    try:
        [float(v) for k in keys for v in rec[k]]
    except (TypeError, ValueError):
        raise ReportError(f"{where}: the lists must hold numbers") from None


def shares(contrib: np.ndarray) -> np.ndarray:
    """Contributions as fractions of each period's overall loss."""
    tot = contrib.sum(1, keepdims=True)
    return np.divide(contrib, tot, out=np.zeros_like(contrib), where=tot > 0)


def standardized_trajectories(losses: np.ndarray) -> np.ndarray:
    """(n, T) rows t_i with zero mean and unit variance (constant rows stay 0)."""
    t = losses.T.copy()
    t -= t.mean(1, keepdims=True)
    sd = t.std(1, keepdims=True)
    return np.divide(t, sd, out=np.zeros_like(t), where=sd > 0)


def pca_2d(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (n, 2) of the standardised trajectories on their two principal axes, and
    the fraction of variance of each axis."""
    if losses.shape[0] < 3:
        raise ReportError(f"PCA needs at least 3 periods of logs, the run has {losses.shape[0]}")
    x = standardized_trajectories(losses)
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    coords = u[:, :2] * s[:2]
    var = s ** 2
    frac = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords, frac


def correlation(losses: np.ndarray) -> np.ndarray:
    """(n, n) Pearson correlation of the loss trajectories (0 for constant ones, 1 on the diagonal)."""
    x = standardized_trajectories(losses)
    c = x @ x.T / max(x.shape[1], 1)
    np.fill_diagonal(c, 1.0)
    return c


def difficulty(run: dict) -> dict[str, float]:
    """Table S-1: reduction -w_i^(0) (L_i^(T) - L_i^(0)) divided by |reduction of D@0|."""
    return difficulty_scaled(run)[0]


def difficulty_scaled(run: dict) -> tuple[dict[str, float], str, float]:
    """Table S-1 and how it is scaled: (table, reference loss, its unscaled reduction).

    The reductions are divided by the *magnitude* of the reference's reduction, so the sign
    keeps its meaning (positive: the loss went down) even if the reference went up: then
    its own entry is -1 rather than every sign flipping. The reference is D@0, the easiest
    loss in the supplement; if D@0 is not logged or did not change, the loss whose reduction
    is largest in magnitude. ReportError if no loss changed (nothing to scale by).
    """
    L = run["losses"]
    if L.shape[0] < 2:
        raise ReportError(f"the difficulty table needs at least 2 periods of logs, the run has {L.shape[0]}")
    w0 = run["weights"][0]  # weights set by the initialization at the end of period 0
    red = -w0 * (L[-1] - L[0])
    names = run["names"]
    finite = np.isfinite(red)
    if not finite.any():
        raise ReportError("the difficulty table cannot be scaled: no loss has a finite reduction")
    i = names.index("D@0") if "D@0" in names else -1
    if i < 0 or not finite[i] or red[i] == 0:
        i = int(np.argmax(np.where(finite, np.abs(red), -1.0)))
    if red[i] == 0:
        raise ReportError("the difficulty table cannot be scaled: no loss changed between the first and "
                          "the last period")
    scale = abs(float(red[i]))
    return {n: float(v / scale) for n, v in zip(names, red)}, names[i], float(red[i])


def _split(name: str) -> tuple[str, int | None]:
    t, _, k = name.partition("@")
    return t, (int(k) if k.isdigit() else None)


def difficulty_markdown(table: dict[str, float], reference: str = "D@0", reference_grew: bool = False) -> str:
    """Table S-1 layout: one row per loss type, one column per scale; easiest/hardest 10 marked."""
    order = sorted(table, key=table.get)
    hard, easy = set(order[:10]), set(order[-10:])
    rows = ["| type | " + " | ".join(f"scale {k}" for k in range(NUM_SCALES)) + " |",
            "|---|" + "---|" * NUM_SCALES]
    types = [t for t in LOSS_TYPES if any(_split(n)[0] == t for n in table)]
    for t in types:
        cells = []
        for k in range(NUM_SCALES):
            name = f"{t}@{k}"
            if name not in table:
                cells.append("")
                continue
            v = f"{table[name]:.3f}"
            cells.append(f"**{v}**" if name in easy else f"_{v}_" if name in hard else v)
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    other = [n for n in table if _split(n)[1] is None]
    for n in other:
        rows.append(f"| {n} | {table[n]:.3f} |" + " |" * (NUM_SCALES - 1))
    rows.append("")
    rows.append(f"Reduction of each loss (Eq. S-1) divided by |reduction of {reference}|; higher = easier, "
                f"negative = the loss grew. **bold**: the 10 easiest, _italic_: the 10 most difficult.")
    if reference_grew:
        rows.append(f"Note: {reference} grew over the run (its entry is -1); the table is scaled by the size "
                    f"of its change, so the signs still mean reduced (+) / grew (-).")
    return "\n".join(rows)


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("the figures need matplotlib, which is not installed: pip install 'mlrb[report]' "
                          "(the difficulty table was written without it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _type_colors(plt, names):
    cmap = plt.get_cmap("tab20")
    types = list(dict.fromkeys(_split(n)[0] for n in names))
    return {t: cmap(i % 20) for i, t in enumerate(types)}


def plot_contributions(run: dict, coords: np.ndarray | None, path: str) -> None:
    plt = _require_matplotlib()
    names, share = run["names"], shares(run["contributions"])
    epochs = sorted(set(run["epoch"].tolist()))
    ncols = min(len(epochs), 6) if coords is not None else 0
    fig = plt.figure(figsize=(max(10, 3 * ncols), 9 if ncols else 7))
    ax = fig.add_subplot(2 if ncols else 1, 1, 1)
    im = ax.imshow(share.T, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("period (1/4 epoch)")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=4 if len(names) > 40 else 7)
    ax.set_title("Contribution of each loss to the overall loss, w_i L_i / sum_j w_j L_j (Fig. 3)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    if ncols:
        # Fig. 3: per epoch (last period of each), circles on the Fig. 2 plane.
        chosen = [max(np.nonzero(run["epoch"] == e)[0]) for e in epochs][-ncols:]
        prev = None
        scale = 2000.0 / max(share.max(), 1e-12) / max(len(names) / 13, 1)
        for j, t in enumerate(chosen):
            a = fig.add_subplot(2, ncols, ncols + j + 1)
            s = share[t]
            if prev is None:
                colors = ["green"] * len(s)
            else:
                d = s - prev
                tol = 0.02 * max(s.max(), 1e-12)
                colors = ["red" if v > tol else "blue" if v < -tol else "green" for v in d]
            a.scatter(coords[:, 0], coords[:, 1], s=s * scale, c=colors, alpha=0.5, edgecolors="k", linewidths=0.3)
            lam = run["lambda"][t]
            a.set_title(f"epoch {run['epoch'][t] + 1}" + (f", λ={lam:g}" if lam is not None else ""), fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
            prev = s
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_pca(run: dict, coords: np.ndarray, frac: np.ndarray, path: str) -> None:
    plt = _require_matplotlib()
    names = run["names"]
    colors = _type_colors(plt, names)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, by in zip(axes, ("type", "scale")):
        seen = set()
        for (x, y), n in zip(coords, names):
            t, k = _split(n)
            key = t if by == "type" else (f"scale {k}" if k is not None else t)
            color = colors[t] if by == "type" else plt.get_cmap("viridis")((k or 0) / max(NUM_SCALES - 1, 1))
            marker = _MARKERS[(k or 0) % len(_MARKERS)] if by == "type" else "o"
            ax.scatter([x], [y], color=color, marker=marker, s=40, edgecolors="k", linewidths=0.3,
                       label=key if key not in seen else None)
            seen.add(key)
            ax.annotate(n, (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(f"PC 1 ({frac[0] * 100:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({frac[1] * 100:.0f}% of variance)")
        ax.set_title(f"({'a' if by == 'type' else 'b'}) loss trajectories by {by} (Fig. 2)")
        ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_correlation(run: dict, path: str) -> None:
    plt = _require_matplotlib()
    names = run["names"]
    # Group by type (Fig. S-2), scales in order within a type.
    type_rank = {t: i for i, t in enumerate(LOSS_TYPES)}
    order = sorted(range(len(names)), key=lambda i: (type_rank.get(_split(names[i])[0], 99), _split(names[i])[1] or 0, i))
    c = correlation(run["losses"])[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(10, 9))
    im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    labels = [names[i] for i in order]
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    fs = 4 if len(labels) > 40 else 7
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    start = 0
    types = [_split(n)[0] for n in labels]
    for i in range(1, len(types) + 1):
        if i == len(types) or types[i] != types[start]:
            ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), i - start, i - start, fill=False, ec="blue", lw=1))
            start = i
    ax.set_title("Correlation between the loss trajectories (Fig. S-2)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


class ReportFiles(dict):
    """{what: path} of the files written, and ``skipped``: {what: why} of those that were not."""

    def __init__(self):
        super().__init__()
        self.skipped: dict[str, str] = {}


def skipped_parts(run: dict) -> dict[str, str]:
    """The parts of the report a run is too short (or too narrow) for, with the reason."""
    T, n = run["losses"].shape
    out = {}
    if T < 2:
        out["difficulty.csv/.md (Table S-1)"] = f"needs the first and a later period, the run has {T} period"
    why = (f"need at least 3 periods of logs, the run has {T}" if T < 3 else
           f"need at least 2 losses, the run logs {n}" if n < 2 else None)
    if why:
        out["pca.png (Fig. 2), correlation.png (Fig. S-2)"] = why
        out["the per-epoch circles of contributions.png (Fig. 3)"] = "they are drawn on the Fig. 2 plane"
    return out


def make_report(run_dir: str, out_dir: str | None = None) -> ReportFiles:
    """Write the tables and figures; returns {what: path} with ``.skipped`` {what: why} for
    the parts the run is too short for. Raises ReportError (after writing the tables) if
    matplotlib is missing."""
    run = load_run(run_dir)
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    written = ReportFiles()
    written.skipped.update(skipped_parts(run))
    if run["losses"].shape[0] >= 2:
        try:
            table, reference, ref_red = difficulty_scaled(run)
        except ReportError as exc:
            written.skipped["difficulty.csv/.md (Table S-1)"] = str(exc)
        else:
            csv_path = os.path.join(out_dir, "difficulty.csv")
            with open(csv_path, "w") as fh:
                fh.write(f"loss,scaled_reduction (reduction / |reduction of {reference}|)\n")
                fh.writelines(f"{n},{v:.6f}\n" for n, v in table.items())
            md_path = os.path.join(out_dir, "difficulty.md")
            with open(md_path, "w") as fh:
                fh.write(difficulty_markdown(table, reference, ref_red < 0) + "\n")
            written.update(difficulty_csv=csv_path, difficulty_md=md_path)
    _require_matplotlib()
    coords = frac = None
    # A loss that was NaN/inf in some period (a diverged run) has no trajectory to compare:
    # Figs. 2 and S-2 leave it out (and say so) rather than draw NaN.
    finite = np.isfinite(run["losses"]).all(0)
    traj = run if finite.all() else _columns(run, finite)
    if not finite.all():
        bad = [n for n, ok in zip(run["names"], finite) if not ok]
        written.skipped[f"{len(bad)} loss(es) in pca.png and correlation.png"] = (
            "not finite in some period: " + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
        written.skipped.setdefault("the per-epoch circles of contributions.png (Fig. 3)",
                                   "some losses are not finite")
    if traj["losses"].shape[0] >= 3 and len(traj["names"]) >= 2:
        coords, frac = pca_2d(traj["losses"])
        written["pca"] = os.path.join(out_dir, "pca.png")
        plot_pca(traj, coords, frac, written["pca"])
        written["correlation"] = os.path.join(out_dir, "correlation.png")
        plot_correlation(traj, written["correlation"])
    written["contributions"] = os.path.join(out_dir, "contributions.png")
    plot_contributions(run, coords if finite.all() else None, written["contributions"])
    return written


def _columns(run: dict, keep: np.ndarray) -> dict:
    """``run`` restricted to the losses ``keep`` (a boolean mask over the names)."""
    sub = dict(run, names=[n for n, k in zip(run["names"], keep) if k])
    for key in ("losses", "weights_used", "weights", "contributions"):
        sub[key] = run[key][:, keep]
    return sub


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlrb report", description="Figures 2, 3, S-2 and Table S-1 from a run's logs.")
    p.add_argument("run_dir", help="folder written by mlrb train (holds periods.jsonl)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    args = p.parse_args(argv)
    try:
        written = make_report(args.run_dir, args.out)
    except ReportError as exc:
        print(f"mlrb report: error: {exc}", file=sys.stderr)
        return 2
    if "difficulty_md" in written:
        with open(written["difficulty_md"]) as fh:
            print("Table S-1 (loss reduction, scaled):\n" + fh.read())
    for what, path in written.items():
        print(f"{what:<15} {path}")
    for what, why in written.skipped.items():
        print(f"skipped: {what}: {why}")
    return 0
