"""``mlrb fuse --ode RUN_DIR --rde RUN_DIR``: ODE + RDE fusion of two training runs (S-3, S-5).

1. Loads the ODE run's and the RDE run's checkpoints (models rebuilt from their saved
   configs; no weights are downloaded) and the ODE run's data (training and validation
   lists, size, caps, crop; no augmentation).
2. Fits the 12 gammas (mlrb.relative.fit_gammas) on up to --max-train training images
   ("set to minimise ||D^k_out - log D^k||_1 using training data"), and the "RDE only"
   gammas the same way.
3. Evaluates ODE, ODE + RDE and RDE only on the validation set side by side: the depth
   metrics (Table S-6) for ODE and ODE + RDE, WKDR / WKDR= / WKDR!= (Table S-5) for all three
   (RDE only is relative depth: its depth metrics are meaningless and not shown).
4. Writes gammas.json and results.json to --out (default <rde run>/fusion-<time>), never
   over an existing folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

from mlrb.relative.fusion import GAMMA_NAMES, fit_gammas, fuse


class FuseError(RuntimeError):
    """A problem with the runs or options (one line, exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlrb fuse", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ode", required=True, help="run folder of an ODE run (mlrb train)")
    p.add_argument("--rde", required=True, help="run folder of an RDE run (mlrb train --task rde)")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint file name inside <run>/checkpoints")
    p.add_argument("--out", default=None, help="output folder (default <rde>/fusion-<time>; must not exist)")
    p.add_argument("--max-train", type=int, default=400, help="training images used to fit the gammas (evenly spaced)")
    p.add_argument("--max-val", type=int, default=None, help="validation images evaluated (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-pairs", type=int, default=50_000, help="WKDR: sampled pixel pairs per image")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep the WKDR prediction threshold (0 .. 0.2) and report the best per metric "
                        "(the reading the supplement's Table S-5 numbers need)")
    p.add_argument("--no-clip", action="store_true", help="do not restrict the gammas to [0, 1]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_run(run_dir: str, ckpt: str, task: str) -> tuple[dict, dict]:
    """(config dict, checkpoint state) of a run folder, checked to be of ``task``."""
    if not os.path.isdir(run_dir):
        raise FuseError(f"run folder not found: {run_dir}")
    path = os.path.join(run_dir, "checkpoints", ckpt)
    if not os.path.isfile(path):
        raise FuseError(f"no checkpoint {path} (has the run saved one yet?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises several types for truncated/corrupt files
        raise FuseError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != "mlrb-train-1":
        raise FuseError(f"{path} is not an mlrb training checkpoint")
    cfg = state.get("config") or {}
    got = cfg.get("task", "ode")
    if got != task:
        raise FuseError(f"{run_dir} is a {got!r} run; --{task} needs a run of mlrb train"
                        + (" --task rde" if task == "rde" else " (the ordinary depth estimator)"))
    return cfg, state


def config_of(cfg: dict):
    from mlrb.train.trainer import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    c = TrainConfig(**{k: v for k, v in cfg.items() if k in known})
    if c.size is not None:
        c.size = tuple(c.size)
    return c


def build_ode(cfg, state) -> torch.nn.Module:
    from mlrb.models import build_model
    from mlrb.names import AMLR_NAMES, names_of, resolve_select

    head = cfg.head
    if head == "auto":
        head = "softplus" if any(n in AMLR_NAMES for n in names_of(resolve_select(cfg.select))) else "linear"
    model = build_model(cfg.model, n_d=cfg.n_d, pretrained=None, head=head)
    model.load_state_dict(state["model"])
    return model.eval()


def build_rde(cfg, state) -> torch.nn.Module:
    from mlrb.models.relative import build_relative_model

    model = build_relative_model(cfg.model, n_d=cfg.n_d, pretrained=None)
    model.load_state_dict(state["model"])
    return model.eval()


def _spread(n_total: int, n: int | None) -> list[int]:
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted({int(i * n_total / n) for i in range(n)})


@torch.no_grad()
def predict(ode, rde, dataset, indices, batch_size, device, min_depth, progress, desc):
    """Yield (ode depth, maps, gt, mask) batches (CPU float32) over ``indices``."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[indices[i:i + batch_size]
                                                                 for i in range(0, len(indices), batch_size)])
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, file=sys.stderr):
        image = batch["image"].to(device)
        d = ode(image).float().nan_to_num(nan=min_depth).clamp(min=min_depth).cpu()
        maps = {n: r.float().cpu() for n, r in rde(image).items()}
        yield d, maps, batch["depth"].float(), batch["mask"].bool()


def run(args) -> dict:
    from mlrb.metrics.accumulator import MetricAccumulator
    from mlrb.metrics.depth import valid_mask
    from mlrb.metrics.ordinal import WKDR_KEYS, wkdr_per_image
    from mlrb.train.trainer import _build_datasets, _pick_device

    if args.max_train < 1 or args.batch_size < 1 or args.n_pairs < 1 or (args.max_val is not None and args.max_val < 1):
        raise FuseError("--max-train, --max-val, --batch-size and --n-pairs must be >= 1")
    ode_cfg, ode_state = load_run(args.ode, args.checkpoint, "ode")
    rde_cfg, rde_state = load_run(args.rde, args.checkpoint, "rde")
    out = args.out or os.path.join(args.rde, time.strftime("fusion-%Y%m%d-%H%M%S"))
    if os.path.exists(out):
        raise FuseError(f"output folder {out} already exists; choose another --out")
    oc, rc = config_of(ode_cfg), config_of(rde_cfg)
    device = _pick_device(args.device, 0)
    ode, rde = build_ode(oc, ode_state).to(device), build_rde(rc, rde_state).to(device)
    data_cfg = dataclasses.replace(oc, augment=False)
    train_set, val_set = _build_datasets(data_cfg, data_cfg.resolved_size())
    lo = float(getattr(val_set, "min_depth", 1e-3))
    hi = float(getattr(val_set, "max_depth", 10.0))
    crop = oc.eval_crop
    progress = not args.no_progress
    clip = None if args.no_clip else (0.0, 1.0)

    # 1. fit on training data (one batch of everything: the fit is an exact weighted median)
    parts = list(predict(ode, rde, train_set, _spread(len(train_set), args.max_train), args.batch_size, device, lo,
                         progress, "fuse: training set"))
    d = torch.cat([p[0] for p in parts])
    maps = {n: torch.cat([p[1][n] for p in parts]) for n in parts[0][1]}
    gt = torch.cat([p[2] for p in parts])
    m = valid_mask(gt, min_depth=lo, max_depth=hi, crop=crop, mask=torch.cat([p[3] for p in parts])).unsqueeze(1)
    gammas = fit_gammas(d, maps, torch.where(m, gt, 1.0), m, clip=clip)
    gammas_rde = fit_gammas(None, maps, torch.where(m, gt, 1.0), m, size=tuple(gt.shape[-2:]), clip=clip)
    del parts, d, maps, gt, m

    # 2. evaluate on validation data
    acc = {"ODE": MetricAccumulator(), "ODE + RDE": MetricAccumulator(), "RDE": MetricAccumulator()}
    offset = 0
    curves = {key: {} for key in acc}  # column -> metric -> [sum of per-image curves, images]
    for d, maps, gt, mask in predict(ode, rde, val_set, _spread(len(val_set), args.max_val), args.batch_size, device,
                                     lo, progress, "fuse: validation set"):
        fused = fuse(d, maps, gammas)
        rel = fuse(None, maps, gammas_rde, size=tuple(gt.shape[-2:]))
        v = valid_mask(gt, min_depth=lo, max_depth=hi, crop=crop, mask=mask)
        for key, pred in (("ODE", d), ("ODE + RDE", fused), ("RDE", rel)):
            if key != "RDE":
                acc[key].update_depth(pred, gt, min_depth=lo, max_depth=hi, crop=crop, mask=mask)
            rates, ok = wkdr_per_image(pred, gt, v, n_pairs=args.n_pairs, seed=offset)
            acc[key].update(rates, ok)
            if args.sweep:
                from mlrb.metrics.sweep import wkdr_sweep_per_image

                sr, sok = wkdr_sweep_per_image(pred, gt, v, n_pairs=args.n_pairs, seed=offset)
                for mk in WKDR_KEYS:
                    c = curves[key].setdefault(mk, [0.0, 0])
                    c[0] = c[0] + sr[mk][sok[mk]].sum(0)
                    c[1] += int(sok[mk].sum())
        offset += gt.shape[0]
    results = {k: a.compute() for k, a in acc.items()}
    if args.sweep:
        from mlrb.metrics.sweep import DEFAULT_THRESHOLDS, balanced, best_of_curves

        for key in acc:
            cv = {mk: c[0] / c[1] for mk, c in curves[key].items() if c[1]}
            best = best_of_curves(cv, DEFAULT_THRESHOLDS)
            bal = balanced(cv, DEFAULT_THRESHOLDS)
            if bal is not None:
                results[key]["balanced t"] = bal["threshold"]
                results[key].update({f"{mk} balanced": bal[mk] for mk in WKDR_KEYS if mk in bal})
            for mk, b in best.items():
                results[key][f"{mk} best"] = b["best"]
                results[key][f"{mk} best t"] = b["threshold"]
    os.makedirs(out)
    meta = {"ode_run": os.path.abspath(args.ode), "rde_run": os.path.abspath(args.rde),
            "checkpoint": args.checkpoint, "clip": clip, "train_images": min(args.max_train, len(train_set))}
    with open(os.path.join(out, "gammas.json"), "w") as fh:
        json.dump({"ode_rde": gammas, "rde_only": gammas_rde, "order": list(GAMMA_NAMES), **meta}, fh, indent=1)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"results": results, **meta}, fh, indent=1)
    return {"out": out, "gammas": gammas, "gammas_rde": gammas_rde, "results": results,
            "val_images": acc["ODE"].num_images}


def format_results(results: dict) -> str:
    from mlrb.metrics.depth import HIGHER_IS_BETTER, METRIC_KEYS
    from mlrb.metrics.ordinal import WKDR_KEYS

    cols = list(results)
    rows = [f"  {'metric':<20}" + "".join(f"{c:>12}" for c in cols)]
    sweep = [f"{k} best{t}" for k in WKDR_KEYS for t in ("", " t")] + ["balanced t"] + [f"{k} balanced" for k in WKDR_KEYS]
    for k in (*METRIC_KEYS, *WKDR_KEYS, *sweep):
        if not any(k in results[c] for c in cols):
            continue
        arrow = "↑" if k in HIGHER_IS_BETTER else ("" if k.endswith(" t") else "↓")
        cells = "".join(f"{results[c][k]:12.4f}" if k in results[c] else f"{'-':>12}" for c in cols)
        rows.append(f"  {(k + ' ' + arrow).strip():<20}{cells}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except (FuseError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"mlrb fuse: error: {exc}", file=sys.stderr)
        return 2
    g = res["gammas"]
    print("gammas (ODE + RDE): " + "  ".join(f"{n}={g[n]:.3f}" for n in GAMMA_NAMES))
    print(format_results(res["results"]))
    print(f"written: {res['out']}/gammas.json, {res['out']}/results.json")
    return 0
