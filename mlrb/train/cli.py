"""``mlrb train``: train a depth estimator with the fused loss space and loss rebalancing.

With no arguments it trains a small model on the built-in synthetic set on the CPU in a
few minutes and prints the metrics of the untrained and the trained model. Point it at
NYUv2 or KITTI for the paper's setting (288x384, n_d = 1024, 20 epochs, Adam 1e-4).
Under ``torchrun --nproc_per_node N -m mlrb train ...`` it trains with DDP.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mlrb.names import SETS, TABLE5_SETS, resolve_select
from mlrb.models import PRESETS
from mlrb.weighting.rebalance import DEFAULT_MAX_RATIO

# The no-argument run: small enough for a 2-core CPU in well under 5 minutes (~70 s),
# yet long enough (10 epochs = 40 periods: initialization, then rebalancing with lambda
# 3 -> -3 by the fifth epoch and -3 after) for the trained model to be clearly better than
# the untrained one on every seed tried. The encoder starts from random weights here (the
# paper's lr 1e-4 assumes an ImageNet-pretrained one and 20 epochs), hence lr 3e-4 (1e-3
# over 5 epochs was unstable: some runs ended worse in abs_rel than they started). Its
# tensors are tiny: one CPU thread is as fast as two and, on a busy machine, several times
# faster (no OpenMP threads spinning against other processes).
SYNTHETIC_DEFAULTS = {"n_d": 256, "epochs": 10, "synthetic_train": 320, "synthetic_val": 32, "lr": 3e-4,
                      "threads": 1}
# --task rde on synthetic data: 16 decoders of n_d = 64 keep the quick run to a few minutes.
RDE_SYNTHETIC_DEFAULTS = {"n_d": 64}
# The paper's setting (Sec. 4.1), used whenever data is given.
PAPER_DEFAULTS = {"n_d": 1024, "epochs": 20, "lr": 1e-4, "threads": None}


def select_from_arg(text: str) -> str:
    """A Table 5 set key ("{D0}", "L^3|L^4|L^5", ...) or any resolve_select string."""
    text = text.strip()
    sel = TABLE5_SETS.get(text, text)
    resolve_select(sel)  # raises a clear ValueError for unknown names
    return sel


def max_ratio_arg(text: str) -> float | None:
    """--max-ratio: a number >= 1, or 'none' for no cap."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'none', got {text!r}") from None
    if not 1.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 1 or 'none', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlrb train",
        description="Train a monocular depth estimator (timm encoder + the decoder of Lee & Kim's Fig. S-8) "
                    "with the 78-loss space and loss rebalancing. No arguments: a quick CPU run on synthetic data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    p.add_argument("--recipe", default=None, help="a paper's setting as defaults that other options override: "
                   "lee-kim-2020, amlr-2023 (README, Recipes; --list-recipes prints them)")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes' settings and sources, and exit")
    d.add_argument("--data", choices=["synthetic", "nyu-csv", "bts-nyu", "bts-kitti", "make3d"], default=None,
                   help="dataset kind (default: nyu-csv if --train-list ends in .csv, bts-nyu if another "
                        "--train-list is given, else synthetic)")
    d.add_argument("--train-list", help="NYUv2 CSV (rgb,depth per row) or BTS split file (rgb depth focal)")
    d.add_argument("--val-list", help="list for the per-epoch evaluation (default: the training list)")
    d.add_argument("--data-root", help="root of the paths in the lists (CSV: default its folder)")
    d.add_argument("--gt-root", help="BTS: root of the depth paths (default: --data-root)")
    d.add_argument("--depth-scale", default="paper", help="NYUv2 CSV depth PNGs: 'paper' = v/(2^16-1)*10 m, "
                                                       "'mm' = v/1000, or a number")
    d.add_argument("--synthetic-train", type=int, default=None, help="synthetic training samples")
    d.add_argument("--synthetic-val", type=int, default=None, help="synthetic validation samples")
    d.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default 288 384 for real data, 64 96 for synthetic)")
    d.add_argument("--no-augment", action="store_true", help="no flip / colour augmentation")
    d.add_argument("--eval-crop", default=None, help="metric crop: nyu_eigen, kitti_garg, kitti_eigen, lee_kim_nyu "
                                                    "(rows 20:460, cols 24:616 of 480x640) or none")
    d.add_argument("--eval-gt", choices=["resized", "full"], default="resized",
                   help="score against ground truth resized to --size, or at its stored resolution (papers)")
    d.add_argument("--eval-upsample", choices=["bicubic", "bilinear", "nearest"], default="bicubic",
                   help="how predictions are brought to full-resolution ground truth")
    d.add_argument("--tta", choices=["none", "flip", "flip+sw"], default="none",
                   help="evaluation test-time augmentation (flip+sw: AMLR's shifted-window + flip test)")
    d.add_argument("--rotate", type=float, default=0.0, help="random rotation augmentation, max degrees")
    d.add_argument("--random-crop", action="store_true",
                   help="train on random --size crops of full-resolution samples instead of resizing")
    d.add_argument("--rde-list", action="append", default=None, metavar="KIND:PATH",
                   help="--task rde: another training list (repeatable); KIND: nyu-csv, bts-nyu, bts-kitti, "
                        "disparity-csv (relative-only: rgb,disparity rows)")
    m = p.add_argument_group("model")
    m.add_argument("--task", choices=["ode", "rde"], default="ode",
                   help="ode: the depth estimator; rde: the 16 relative maps of the supplement (S-3)")
    m.add_argument("--model", default="resnet18", help="encoder: densenet161, pnasnet5large, efficientnet_b5, "
                                                      "resnet18 or any timm name")
    m.add_argument("--n-d", type=int, default=None, help="decoder width n_d (paper: 1024; synthetic default 256; "
                                                             "--task rde: 256 per decoder, synthetic 64)")
    m.add_argument("--pretrained", default=None, help="encoder weights: a local file, 'cache' (timm's local "
                                                     "cache only) or 'none'; never downloaded")
    m.add_argument("--random-if-missing", action="store_true",
                   help="if the pretrained weights are not found, warn and start from random weights")
    m.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='extra timm model arguments as a JSON object, e.g. \'{"embed_dim": 48}\'')
    m.add_argument("--decoder", choices=["fig-s8", "amlr"], default="fig-s8",
                   help="fig-s8: Lee & Kim's decoder; amlr: Yu & Heo's SiLU deconvolution decoder")
    m.add_argument("--head", choices=["auto", "linear", "softplus"], default="auto",
                   help="output activation (auto: softplus when log-depth AMLR losses are selected)")
    w = p.add_argument_group("losses and weighting")
    w.add_argument("--select", default="all", help="losses: names/sets joined by '|' or ',' (e.g. 'L_D|L_G', "
                                                  "'D@0,M@0') or a Table 5 key: " + ", ".join(TABLE5_SETS))
    w.add_argument("--backend", default="auto", help="loss-space backend: auto, cpu, triton, reference")
    w.add_argument("--weighting", choices=["rebalance", "amlr", "uncertainty", "fixed"], default="rebalance")
    w.add_argument("--lambda", dest="lam", type=float, nargs=2, metavar=("START", "END"), default=(3.0, -3.0),
                   help="rebalancing lambda schedule: START at epoch 1, changing by --lambda-step per epoch to END")
    w.add_argument("--lambda-step", type=float, default=1.5, help="lambda change per epoch (3 -> -3 by epoch 5)")
    w.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), default=(0.5, 2.0),
                   help="bounds of the per-period weight factor")
    w.add_argument("--no-clip", action="store_true", help="unclipped Eq. 11")
    w.add_argument("--max-ratio", type=max_ratio_arg, default=DEFAULT_MAX_RATIO,
                   help="cap on the max/min weight ratio of rebalancing (keeps a nearly-zero loss from getting "
                        "a huge weight); 'none' for the paper's uncapped weights")
    w.add_argument("--amlr-lam", type=float, default=1e-3, help="AMLR step size lambda")
    w.add_argument("--fixed-weights", type=float, nargs="+", default=None,
                   help="--weighting fixed: one weight for all or one per loss (default 1/n)")
    w.add_argument("--periods-per-epoch", type=int, default=4, help="rebalancing periods per epoch")
    w.add_argument("--no-rebalance-init", action="store_true",
                   help="rebalancing without the Eq. 9 initialization ('R without I', Table 5(d))")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None, help="epochs (paper 20; synthetic default 10)")
    o.add_argument("--batch-size", type=int, default=None,
                   help="per process (default: the preset's, densenet161 12, others 8 as in the paper)")
    o.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper 1e-4; synthetic default 3e-4)")
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    o.add_argument("--lr-schedule", choices=["constant", "poly-updown"], default="constant",
                   help="poly-updown: from --lr-min up to --lr at mid-run and back, every batch (AMLR)")
    o.add_argument("--lr-min", type=float, default=3e-5, help="poly-updown: first and last learning rate")
    o.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    o.add_argument("--workers", type=int, default=0, help="data loader workers")
    o.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: torch's; 1 for the synthetic quick run)")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("output")
    r.add_argument("--out", default=None, help="run folder (default runs/train-<time>)")
    r.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps")
    r.add_argument("--resume", default=None, help="checkpoint to resume, or 'auto' (<out>/checkpoints/last.pt)")
    r.add_argument("--no-eval-before", action="store_true", help="skip evaluating the untrained model")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--eval-only", metavar="CKPT", default=None,
                   help="only evaluate this checkpoint with the evaluation protocol of these options, then exit")
    r.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to <out>/tensorboard")
    r.add_argument("--list-sets", action="store_true", help="print the loss sets and exit")
    from mlrb.train.dmd import add_arguments as add_dmd_arguments
    add_dmd_arguments(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Argument errors the trainer would only meet later (after writing to the run folder,
    or after training, at evaluation): ValueError naming the option."""
    from mlrb.metrics.depth import CROPS

    at_least = {"--batch-size": (args.batch_size, 1), "--epochs": (args.epochs, 1), "--n-d": (args.n_d, 1),
                "--synthetic-train": (args.synthetic_train, 1), "--synthetic-val": (args.synthetic_val, 1),
                "--max-steps": (args.max_steps, 1), "--workers": (args.workers, 0),
                "--ckpt-every": (args.ckpt_every, 0), "--periods-per-epoch": (args.periods_per_epoch, 1),
                "--threads": (args.threads, 1)}
    for opt, (value, low) in at_least.items():
        if value is not None and value < low:
            raise ValueError(f"{opt} must be >= {low}, got {value}")
    if args.lr is not None and not (args.lr > 0 and args.lr < float("inf")):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.seed < 2**32:  # the data order and samples seed torch generators with multiples of it
        raise ValueError(f"--seed must be from 0 to {2**32 - 1}, got {args.seed}")
    crops = (*CROPS, "lee_kim_nyu", "none")
    if args.eval_crop is not None and args.eval_crop not in crops:
        raise ValueError(f"--eval-crop must be one of {', '.join(crops)}, got {args.eval_crop!r}")
    if args.depth_scale not in ("paper", "mm"):
        try:
            scale = float(args.depth_scale)
        except ValueError:
            scale = float("nan")
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"--depth-scale must be 'paper', 'mm' or a positive number, got {args.depth_scale!r}")
    if args.size is not None and min(args.size) < 1:
        raise ValueError(f"--size must be positive, got {args.size[0]} {args.size[1]}")


def config_from_args(args: argparse.Namespace):
    from mlrb.train.trainer import TrainConfig

    check_args(args)

    data = args.data
    if data is None:
        given = args.train_list or args.val_list  # --eval-only needs only --val-list
        data = "synthetic" if not given else ("nyu-csv" if given.endswith(".csv") else "bts-nyu")
    defaults = SYNTHETIC_DEFAULTS if data == "synthetic" else PAPER_DEFAULTS
    if args.task == "rde" and args.select != "all":
        raise ValueError("--select chooses loss-space losses of --task ode; --task rde always trains the 16 "
                         "relative-map losses")
    if args.task == "rde":
        defaults = {**defaults, **(RDE_SYNTHETIC_DEFAULTS if data == "synthetic" else {"n_d": 256})}  # S-4: n_d 256
    pick = lambda v, key: defaults[key] if v is None else v
    out = args.out
    if out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            run_id = os.environ.get("TORCHELASTIC_RUN_ID")
            if not run_id or run_id == "none":
                raise ValueError("under torchrun give --out (every process must write to the same run folder)")
            out = os.path.join("runs", f"train-{run_id}")
        else:
            out = os.path.join("runs", time.strftime("train-%Y%m%d-%H%M%S"))
    pretrained = None if args.pretrained in (None, "none", "None") else args.pretrained
    model_kwargs = None
    if args.model_kwargs:
        import json
        try:
            model_kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model-kwargs is not valid JSON: {exc}") from None
        if not isinstance(model_kwargs, dict):
            raise ValueError("--model-kwargs must be a JSON object, e.g. '{\"embed_dim\": 48}'")
    depth_scale = args.depth_scale
    if depth_scale not in ("paper", "mm"):
        depth_scale = float(depth_scale)
    return TrainConfig(
        data=data, train_list=args.train_list, val_list=args.val_list, data_root=args.data_root,
        gt_root=args.gt_root, depth_scale=depth_scale,
        synthetic_train=SYNTHETIC_DEFAULTS["synthetic_train"] if args.synthetic_train is None else args.synthetic_train,
        synthetic_val=SYNTHETIC_DEFAULTS["synthetic_val"] if args.synthetic_val is None else args.synthetic_val,
        size=tuple(args.size) if args.size else None, augment=not args.no_augment,
        eval_crop=None if args.eval_crop in (None, "none") else args.eval_crop,
        model=args.model, n_d=pick(args.n_d, "n_d"), pretrained=pretrained,
        random_if_missing=args.random_if_missing, head=args.head,
        select=select_from_arg(args.select), backend=args.backend, weighting=args.weighting,
        lambda_start=args.lam[0], lambda_end=args.lam[1], lambda_step=args.lambda_step,
        clip=None if args.no_clip else tuple(args.clip), max_ratio=args.max_ratio, amlr_lam=args.amlr_lam,
        fixed_weights=args.fixed_weights, periods_per_epoch=args.periods_per_epoch,
        epochs=pick(args.epochs, "epochs"), batch_size=args.batch_size if args.batch_size is not None else PRESETS.get(args.model, {}).get("batch_size", 8), lr=pick(args.lr, "lr"),
        max_steps=args.max_steps, amp=not args.no_amp, device=args.device, num_workers=args.workers, threads=pick(args.threads, "threads"),
        seed=args.seed, out_dir=out, ckpt_every=args.ckpt_every, resume=args.resume,
        eval_before=not args.no_eval_before, progress=not args.no_progress,
        model_kwargs=model_kwargs, decoder=args.decoder, rotate=args.rotate, random_crop=args.random_crop, lr_schedule=args.lr_schedule,
        lr_min=args.lr_min, eval_gt=args.eval_gt, eval_upsample=args.eval_upsample, tta=args.tta,
        rebalance_init=not args.no_rebalance_init, tensorboard=args.tensorboard,
        task=args.task, rde_lists=args.rde_list,
    )


# Options whose destination differs from the TrainConfig field they set.
_DEST_FIELDS = {"lam": ("lambda_start", "lambda_end"), "no_clip": ("clip",), "no_augment": ("augment",),
                "out": ("out_dir",), "workers": ("num_workers",), "no_amp": ("amp",),
                "no_eval_before": ("eval_before",), "no_progress": ("progress",),
                "no_rebalance_init": ("rebalance_init",)}


def explicit_fields(argv: list[str] | None) -> set[str]:
    """The TrainConfig fields the user set on the command line (recipes leave them alone)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return {f for dest in given for f in _DEST_FIELDS.get(dest, (dest,))}


def recipe_config(args: argparse.Namespace, argv: list[str] | None):
    """(TrainConfig, applied settings or None): the options, with the recipe's defaults filled in."""
    from mlrb.train.recipes import apply_recipe

    cfg = config_from_args(args)
    if not args.recipe:
        return cfg, None
    return apply_recipe(cfg, args.recipe, explicit_fields(argv))


def format_comparison(before: dict | None, after: dict) -> str:
    """Table of metrics before and after training (arrows: which direction is better)."""
    from mlrb.metrics.depth import HIGHER_IS_BETTER, METRIC_KEYS

    rows = [f"  {'metric':<10}{'untrained':>12}{'trained':>12}"]
    keys = [k for k in METRIC_KEYS if k in after] or [k for k in ("rel_l1", "wkdr", "wkdr_eq", "wkdr_neq") if k in after]
    for k in keys:
        if k not in after:
            continue
        arrow = "↑" if k in HIGHER_IS_BETTER else "↓"
        b = f"{before[k]:12.4f}" if before and k in before else f"{'-':>12}"
        rows.append(f"  {k + ' ' + arrow:<10}{b}{after[k]:12.4f}")
    return "\n".join(rows)


def resume_command(argv: list[str] | None, out_dir: str) -> str:
    """The command line that resumes the run started with ``argv`` (same options, --out, --resume auto)."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        args = args[1:]
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("--resume", "--out"):
            skip = True
        elif not a.startswith(("--resume=", "--out=")):
            keep.append(a)
    return shlex.join(["mlrb", "train", *keep, "--out", out_dir, "--resume", "auto"])


def report_interrupted(stop, argv: list[str] | None, out_dir: str) -> None:
    """What Ctrl-C saved (a TrainingInterrupted) and the command that resumes the run."""
    print(f"\nmlrb train: interrupted after step {stop.step}; the run is saved in {stop.checkpoint}. "
          f"Resume it with:\n  {resume_command(argv, out_dir)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        from mlrb.train.recipes import RECIPES
        for r in RECIPES.values():
            print(f"{r.name}: {r.title}")
            for data in ("(all data)", *r.by_data):
                for st in (r.settings if data == "(all data)" else r.by_data[data]):
                    print(f"  {data:<11} {st.field:<18} {st.value!r:<40} {st.source}")
            print(f"  compare: {r.compare}\n")
        return 0
    if args.list_sets:
        print("Table 5 sets:")
        for key, sel in TABLE5_SETS.items():
            print(f"  {key:<16} {sel:<22} ({len(resolve_select(sel))} losses)")
        print("named sets: " + ", ".join(SETS))
        return 0
    if args.arch == "dmd":
        from mlrb.train.dmd import main as dmd_main
        return dmd_main(args, argv, parser)
    # The DMD options (their help starts "dmd") would be silently ignored by the other architectures.
    dmd_only = {a.dest: a.option_strings[0] for a in parser._actions if (a.help or "").startswith("dmd")}
    stray = sorted(dmd_only[d] for d in explicit_fields(argv) if d in dmd_only)
    if stray:
        parser.error(f"{', '.join(stray)} {'apply' if len(stray) > 1 else 'applies'} to --arch dmd only")
    try:
        cfg, applied = recipe_config(args, argv)
    except ValueError as exc:
        parser.error(str(exc))
    from mlrb.train.datasets import DataFileError
    from mlrb.models import PretrainedWeightsError
    from mlrb.errors import UserError, one_line
    from mlrb.train.interrupt import TrainingInterrupted
    from mlrb.train.trainer import Trainer

    if args.eval_only:
        from mlrb.train.evalonly import evaluate_checkpoint
        from mlrb.train.protocol import describe_protocol
        try:
            metrics = evaluate_checkpoint(cfg, args.eval_only, recipe_settings=applied)
        except (DataFileError, PretrainedWeightsError, FileNotFoundError, ValueError) as exc:
            print(f"mlrb train: error: {one_line(exc)}", file=sys.stderr)
            return 2
        print(f"mlrb train --eval-only {args.eval_only}: {describe_protocol(cfg)}")
        from mlrb.metrics.depth import METRIC_KEYS
        print("\n".join(f"  {k:<10}{metrics[k]:12.4f}" for k in METRIC_KEYS if k in metrics))
        return 0

    if cfg.task == "rde":
        from mlrb.train.rde import RDETrainer as Trainer  # noqa: F811 (same loop, RDE hooks)
    elif cfg.rde_lists:
        parser.error("--rde-list needs --task rde")
    t0 = time.perf_counter()
    try:
        trainer = Trainer(cfg)
    except (DataFileError, PretrainedWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"mlrb train: error: {one_line(exc)}", file=sys.stderr)
        return 2
    trainer.recipe_settings = applied
    if trainer.main:
        from mlrb.train.protocol import describe_protocol
        from mlrb.train.recipes import format_settings
        if applied is not None:
            print(format_settings(cfg.recipe, applied))
        print(f"mlrb train: {describe_protocol(cfg)}")
        info = trainer.model.info
        print(f"mlrb train: {cfg.data} data {len(trainer.train_set)} train / {len(trainer.val_set)} val at "
              f"{trainer.size[0]}x{trainer.size[1]}; encoder {info.timm_name} ({info.pretrained} init), "
              f"n_d={info.n_d}; {len(trainer.names)} losses, {cfg.weighting} weighting; "
              f"{trainer.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, batch {cfg.batch_size} x "
              f"{trainer.world} process(es) on {trainer.device}; run folder {cfg.out_dir}")
    try:
        summary = trainer.fit()
    except TrainingInterrupted as stop:
        if trainer.main:
            report_interrupted(stop, argv, cfg.out_dir)
        return 130
    except UserError as exc:  # e.g. a broken image met during training
        print(f"mlrb train: error: {one_line(exc)}", file=sys.stderr)
        if trainer.main and getattr(exc, "checkpoint", None):
            print(f"mlrb train: the run up to step {trainer.global_step} is saved in {exc.checkpoint}; after "
                  f"fixing it, resume with:\n  {resume_command(argv, cfg.out_dir)}", file=sys.stderr)
        return 2
    finally:
        trainer.close()
    if trainer.main:
        print(f"\nmlrb train: {summary['steps']} steps ({summary['epochs']:.2f} epochs, {summary['periods']} "
              f"periods) in {summary['train_seconds']:.1f} s of training, {time.perf_counter() - t0:.1f} s in all")
        print(format_comparison(summary["metrics_before"], summary["metrics_after"]))
        from mlrb.train.protocol import describe_protocol
        print(f"({describe_protocol(cfg)})")
        print(f"checkpoint: {summary['checkpoint']}\nlogs: {cfg.out_dir}/periods.jsonl (plots: mlrb report {cfg.out_dir})")
    return 0
