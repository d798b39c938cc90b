"""Training of the DMD network (Jun et al., ECCV 2022, Sec. 4.3): ``mlrb train --arch dmd``.

Two phases, each a run of :class:`DMDTrainer` (a :class:`~mlrb.train.trainer.Trainer`, so
run folders, logs, resume, DDP and AMP are the shared ones):

1. encoder + G-Net + N-Net (M-Net removed), losses L_G, L_N, L_Nx, L_Ny; 20 epochs, Adam
   lr 1e-4 x 0.1 every 5 epochs, weight decay 1e-4;
2. the whole network, initialised from phase 1's checkpoint (M-Net fresh), all losses; 15
   epochs, lr 1e-4 x 0.1 every 3 epochs.

``--phase both`` runs them into <out>/phase1 and <out>/phase2. Variants (Tables 2-4):
'Baseline' (M-Net alone, no MDR, losses L_M, L_Mx, L_My) and 'single-phase' (everything
at once); ``--decoders`` / ``--mdr`` give Table 3's rows. The paper sums its losses
(``--weighting fixed`` with weights 1, the default here); any mlrb weighter can be used.

Samples may be relative-only (a ``metric`` False entry in the batch, e.g. HR-WSI
disparity): they get only the G and N losses, through the weighters' per-sample loss mask.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mlrb.models.dmd import MDR_MODES, build_dmd, mdr_queries_for
from mlrb.models.dmd_losses import dmd_loss_names, dmd_losses, dmd_targets, metric_depth
from mlrb.train.trainer import TrainConfig, Trainer

STAGES = ("1", "2", "single")
VARIANTS = ("proposed", "baseline", "single-phase")
PHASES = ("1", "2", "both")
# The paper's schedules (Sec. 4.3): (epochs, epochs between lr x 0.1).
PAPER_PHASE1 = (20, 5)
PAPER_PHASE2 = (15, 3)
# ``mlrb train --arch dmd`` on synthetic data: a small network that trains on a CPU in a few
# minutes (no lr decay: the runs are short and start from a random encoder).
SYNTHETIC = {"n_d": 128, "epochs": 4, "phase2_epochs": 6, "lr": 3e-4, "mdr_patch": 4, "threads": 1}


@dataclass
class DMDConfig(TrainConfig):
    """TrainConfig plus the DMD settings; one instance describes one run (one phase)."""

    arch: str = "dmd"
    stage: str = "single"            # "1", "2" or "single" (Baseline / single-phase)
    decoders: str = "gnm"            # subset of "gnm" (Table 3); phase 1 uses its g and n
    mdr: str = "full"                # "full", "no-mu" (MDR*), "none"
    mdr_patch: int = 8
    log_m: bool = True               # L_logM (Eq. 11)
    init_from: str | None = None     # stage 2: the phase-1 checkpoint
    lr_step: int | None = None       # epochs between lr x lr_gamma (None: no decay)
    lr_gamma: float = 0.1
    weight_decay: float = 1e-4
    relative_fraction: float = 0.0   # synthetic data: share of samples given as relative-only


def stage_loss_names(cfg: DMDConfig) -> tuple[str, ...]:
    """The loss columns of one run."""
    dec = cfg.decoders
    if cfg.stage == "1":
        return dmd_loss_names(g="g" in dec, n="n" in dec, m=False)
    return dmd_loss_names(g="g" in dec, n="n" in dec, m="m" in dec, mu="m" in dec and cfg.mdr == "full",
                          log_m=cfg.log_m)


class RelativeSamples(Dataset):
    """Marks a share of a dataset's samples as relative-only, as HR-WSI samples are: their
    depth becomes a disparity map c / depth with a random scale c (so only the order of
    depths and N are defined) and ``metric`` False; the others get ``metric`` True."""

    def __init__(self, base: Dataset, fraction: float, seed: int = 0):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"relative_fraction must lie in [0, 1], got {fraction}")
        self.base, self.fraction, self.seed = base, float(fraction), int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        rel = bool(torch.rand((), generator=g) < self.fraction)
        if rel:
            c = 0.5 + 1.5 * float(torch.rand((), generator=g))
            d = s["depth"]
            s["depth"] = torch.where(s["mask"] & (d > 0), c / d.clamp_min(1e-6), torch.zeros_like(d))
        s["metric"] = torch.tensor(not rel)
        return s


def check_config(cfg: DMDConfig) -> None:
    """Settings of one run that would otherwise fail only after training started (at the first
    evaluation, or in phase 2 after phase 1 has run): ValueError naming the option.
    :func:`run_plan` checks every run of a plan before it trains the first."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {cfg.stage!r}")
    if cfg.mdr not in MDR_MODES:
        raise ValueError(f"--mdr must be one of {', '.join(MDR_MODES)}, got {cfg.mdr!r}")
    dec = cfg.decoders
    if not dec or set(dec) - set("gnm") or len(set(dec)) != len(dec):
        raise ValueError(f"--decoders must be letters of 'gnm' (G-Net, N-Net, M-Net), each at most once, "
                         f"got {dec!r}")
    # Phase 1 is scored on N (Kendall's tau, |N^ - N|), the other runs on M's depth, or on N
    # without M-Net: G alone (the gradients) gives nothing to score. The paper's phase 1 is
    # encoder + G-Net + N-Net and Table 3's rows all have N-Net or M-Net.
    if cfg.stage == "1" and "n" not in dec:
        raise ValueError(f"--decoders {dec}: phase 1 trains N-Net (with G-Net) and is scored on N; "
                         f"include n (e.g. gn or gnm)")
    if not set(dec) & set("nm"):
        raise ValueError(f"--decoders {dec}: without N-Net or M-Net the network predicts no depth to "
                         f"evaluate; include n or m (e.g. gnm)")
    if cfg.stage == "2" and not cfg.init_from:
        raise ValueError("phase 2 starts from a phase-1 checkpoint: give --init-from PATH (or --phase both)")
    # Phase 2 takes its epochs and lr steps from the --phase2-* options (plan()).
    epochs, lr_step = ("--phase2-epochs", "--phase2-lr-step") if cfg.stage == "2" else ("--epochs", "--lr-step")
    if cfg.epochs < 1:
        raise ValueError(f"{epochs} must be >= 1, got {cfg.epochs}")
    if cfg.lr_step is not None and cfg.lr_step < 1:
        raise ValueError(f"{lr_step} must be >= 1 epoch, got {cfg.lr_step}")
    # nan / inf pass Adam's own check and turn the weights into NaN at the first step.
    if not 0.0 <= cfg.weight_decay < float("inf"):
        raise ValueError(f"--weight-decay must be a number >= 0, got {cfg.weight_decay}")
    if not 0.0 <= cfg.relative_fraction <= 1.0:
        raise ValueError(f"--relative-fraction must lie in [0, 1], got {cfg.relative_fraction}")
    if cfg.mdr_patch < 1:
        raise ValueError(f"--mdr-patch must be >= 1, got {cfg.mdr_patch}")
    if cfg.stage != "1" and "m" in dec and cfg.mdr != "none":
        # Phase 1 has no M-Net: with --phase both a patch too large for --size would show only in phase 2.
        mdr_queries_for(cfg.resolved_size(), cfg.mdr_patch)


class DMDTrainer(Trainer):
    """One DMD run (``cfg.stage``): the network, the losses of Eqs. 7-11, the paper's
    optimizer and step schedule; evaluation in metres (1/m - 1), or, for phase 1 (no M-Net),
    Kendall's tau and the L1 error of N against the ground truth."""

    cfg: DMDConfig

    def __init__(self, cfg: DMDConfig):
        check_config(cfg)
        # "select" is one of the settings a resumed run must share: make it say what is trained.
        cfg = dataclasses.replace(cfg, select=f"dmd:{cfg.stage}:{cfg.decoders}:{cfg.mdr}:"
                                              + ",".join(stage_loss_names(cfg)))
        super().__init__(cfg)

    # ------------------------------------------------------------------ hooks
    def loss_names(self) -> tuple[str, ...]:
        return stage_loss_names(self.cfg)

    def build_datasets(self):
        train, val = super().build_datasets()
        if self.cfg.relative_fraction > 0:
            train = RelativeSamples(train, self.cfg.relative_fraction, seed=self.cfg.seed)
        return train, val

    def build_network(self) -> nn.Module:
        cfg = self.cfg
        decoders = "".join(d for d in cfg.decoders if d in "gn") if cfg.stage == "1" else cfg.decoders
        net = build_dmd(cfg.model, decoders=decoders, mdr=cfg.mdr, n_d=cfg.n_d, size=self.size,
                        mdr_patch=cfg.mdr_patch, pretrained=cfg.pretrained, random_if_missing=cfg.random_if_missing)
        if cfg.stage == "2":
            _load_phase1(net, cfg.init_from)
        return net

    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.model.parameters()), "weight_decay": self.cfg.weight_decay}]
        extra = list(self.weighter.parameters())
        if extra:  # learned loss weights (uncertainty weighting) are not decayed
            groups.append({"params": extra, "weight_decay": 0.0})
        return torch.optim.Adam(groups, lr=self.cfg.lr)

    def lr_at(self, epoch: int) -> float:
        """Step schedule: lr x gamma every lr_step epochs (Sec. 4.3)."""
        step = self.cfg.lr_step
        return self.cfg.lr * (self.cfg.lr_gamma ** (epoch // step) if step else 1.0)

    def train_step(self, batch):
        lr = self.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return super().train_step(batch)

    def compute_losses(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True)
        mask = batch.get("mask")
        metric = batch.get("metric")
        targets = dmd_targets(depth, None if mask is None else mask.to(self.device),
                              None if metric is None else metric.to(self.device))
        with self.autocast():
            pred = self.net(image)
        return dmd_losses(pred, targets, self.names)

    def predict_depth(self, image: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            m = self.model(image)["m"]
        return metric_depth(m.float(), self.min_depth, self.max_depth)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if "m" in self.model.nets:
            return super().evaluate()
        return self._evaluate_relative()

    def _evaluate_relative(self) -> dict[str, float]:
        """Phase 1: Kendall's tau-b of N^ against the ground-truth inverse depth, and the mean
        |N^ - N| over the valid pixels, per image, averaged."""
        from mlrb.metrics.accumulator import MetricAccumulator
        from mlrb.metrics.kendall import kendall_tau_per_image

        self.model.eval()
        acc = MetricAccumulator()
        loader = self.val_loader()
        for batch in loader:
            with self.autocast():
                n_hat = self.model(batch["image"].to(self.device))["N"].float().cpu()
            t = dmd_targets(batch["depth"], batch["mask"])
            taus, counts = kendall_tau_per_image(n_hat, t["m"], t["valid"])
            l1 = ((n_hat - t["N"]).abs() * t["valid"]).sum(dim=(1, 2, 3)) / t["T"].clamp_min(1)
            acc.update({"kendall_tau": taus, "n_l1": l1}, counts >= 2)
        acc.all_reduce()
        self.model.train()
        return acc.compute()


def _load_phase1(net: nn.Module, path: str) -> None:
    """Encoder, G-Net and N-Net weights of a phase-1 checkpoint into a phase-2 network."""
    from mlrb.train.checkpoint import CheckpointError, read_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init-from: phase-1 checkpoint not found: {path}")
    try:
        state = read_checkpoint(path, "--init-from")  # names the file if empty, truncated, corrupt or not mlrb's
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {exc}") from None
    except OSError as exc:  # the file itself (permissions, ...)
        raise CheckpointError(f"--init-from: cannot read checkpoint {path}: {exc.strerror or exc}") from None
    config = state.get("config")
    if not isinstance(config, dict) or config.get("arch") != "dmd" or config.get("stage") != "1" \
            or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"--init-from {path} is not a phase-1 checkpoint of mlrb train --arch dmd")
    fit = f"phase 1: --model {config.get('model')}, --n-d {config.get('n_d')}"
    try:
        result = net.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:  # strict=False still raises on a tensor of another shape
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"--init-from {path} does not fit this network ({fit}): {reason}") from None
    missing = [k for k in result.missing_keys if not k.startswith("nets.m.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"--init-from {path} does not fit this network ({fit}); missing {missing[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}")


# ---------------------------------------------------------------------- runs
def plan(cfg: DMDConfig, phase: str = "both", variant: str = "proposed", *,
         phase2_epochs: int | None = None, phase2_lr_step: int | None = None) -> list[DMDConfig]:
    """The runs of ``mlrb train --arch dmd``: one config per phase, in order.

    ``cfg`` holds the phase-1 (or single-run) epochs and lr_step; phase 2 takes
    ``phase2_epochs`` / ``phase2_lr_step`` (the paper: 15 / 3). With ``both`` the runs go to
    <out>/phase1 and <out>/phase2, phase 2 starting from phase 1's last checkpoint.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if variant != "proposed" and phase != "both":
        raise ValueError(f"--phase {phase} is for the two-phase training; the {variant} variant is one run")
    if variant == "baseline":
        return [dataclasses.replace(cfg, stage="single", decoders="m", mdr="none", log_m=False)]
    if variant == "single-phase":
        return [dataclasses.replace(cfg, stage="single")]
    p2 = dict(epochs=phase2_epochs if phase2_epochs is not None else cfg.epochs,
              lr_step=phase2_lr_step if phase2_lr_step is not None else cfg.lr_step)
    if phase == "1":
        return [dataclasses.replace(cfg, stage="1")]
    if phase == "2":
        return [dataclasses.replace(cfg, stage="2", **p2)]
    one = dataclasses.replace(cfg, stage="1", out_dir=os.path.join(cfg.out_dir, "phase1"))
    two = dataclasses.replace(cfg, stage="2", out_dir=os.path.join(cfg.out_dir, "phase2"),
                              init_from=os.path.join(one.out_dir, "checkpoints", "last.pt"), **p2)
    return [one, two]


def run_plan(runs: list[DMDConfig], *, report=print) -> list[dict]:
    """Train the runs in order; a finished run (summary.json present) is not trained again
    when resuming. Returns the summaries."""
    import json

    for cfg in runs:  # all of them before the first trains: phase 2's options fail before phase 1 runs
        check_config(cfg)
    summaries = []
    for cfg in runs:
        done = os.path.join(cfg.out_dir, "summary.json")
        if cfg.resume == "auto" and os.path.isfile(done) and len(runs) > 1:
            with open(done) as fh:
                summaries.append(json.load(fh))
            report(f"mlrb train --arch dmd: {cfg.out_dir} already finished; skipped")
            continue
        if cfg.resume == "auto" and not os.path.isfile(os.path.join(cfg.out_dir, "checkpoints", "last.pt")):
            cfg = dataclasses.replace(cfg, resume=None)
        trainer = DMDTrainer(cfg)
        try:
            if trainer.main:
                counts = trainer.model.param_counts()
                what = {"1": "phase 1", "2": "phase 2", "single": "single run"}[cfg.stage]
                report(f"mlrb train --arch dmd: {what}, decoders {''.join(trainer.model.nets)}, MDR "
                       f"{trainer.model.mdr_mode} -> {cfg.out_dir}; {len(trainer.names)} losses, {cfg.weighting} weighting; "
                       f"{trainer.steps_per_epoch} steps/epoch x {cfg.epochs} epochs; params "
                       + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
            summaries.append(trainer.fit())
        finally:
            trainer.close()
    return summaries


def add_arguments(parser) -> None:
    """``--arch`` and the DMD options of ``mlrb train``."""
    g = parser.add_argument_group("architecture (--arch dmd: Jun et al. 2022)")
    g.add_argument("--arch", choices=["ode", "dmd"], default="ode",
                   help="ode: Lee & Kim's encoder-decoder with the loss space; dmd: the depth map decomposition network")
    g.add_argument("--phase", choices=list(PHASES), default="both",
                   help="dmd: 1 = encoder+G+N, 2 = everything from --init-from, both = 1 then 2")
    g.add_argument("--dmd-variant", choices=list(VARIANTS), default="proposed",
                   help="dmd: proposed (two phases), baseline (M-Net only, L_M/L_Mx/L_My), single-phase")
    g.add_argument("--decoders", default="gnm", help="dmd: decoders (Table 3 rows: m, nm, gnm)")
    g.add_argument("--mdr", choices=list(MDR_MODES), default="full", help="dmd: MDR block (no-mu = MDR*)")
    g.add_argument("--mdr-patch", type=int, default=None, help="dmd: MDR patch size (paper 8; synthetic default 4)")
    g.add_argument("--no-log-m", action="store_true", help="dmd: without L_logM (Eq. 11)")
    g.add_argument("--init-from", default=None, help="dmd --phase 2: the phase-1 checkpoint")
    g.add_argument("--phase2-epochs", type=int, default=None, help="dmd: phase-2 epochs (paper 15)")
    g.add_argument("--lr-step", type=int, default=None,
                   help="dmd: epochs between lr x 0.1 (paper: 5 in phase 1 / single runs; synthetic: none)")
    g.add_argument("--phase2-lr-step", type=int, default=None, help="dmd: the same for phase 2 (paper 3)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="dmd: Adam weight decay")
    g.add_argument("--relative-fraction", type=float, default=0.0,
                   help="dmd, synthetic data: share of training samples given as relative-only (disparity)")


def main(args, argv, parser) -> int:
    """``mlrb train --arch dmd``: the arguments parsed by :mod:`mlrb.train.cli`."""
    from mlrb.errors import UserError, one_line
    from mlrb.models import PretrainedWeightsError
    from mlrb.train.cli import config_from_args, report_interrupted
    from mlrb.train.datasets import DataFileError
    from mlrb.train.interrupt import TrainingInterrupted

    # Options left at their generic defaults take the DMD ones (the paper's for real data).
    probe = type(parser)(add_help=False)
    for action in parser._actions:  # noqa: SLF001 - a copy of the parser with None defaults
        if action.option_strings and action.dest in ("model", "weighting"):
            probe.add_argument(*action.option_strings, dest=action.dest, default=None)
    given, _ = probe.parse_known_args(argv)
    try:
        base = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    synthetic = base.data == "synthetic"
    pick = lambda v, key, paper: (SYNTHETIC[key] if synthetic else paper) if v is None else v  # noqa: E731
    fields = dataclasses.asdict(base)
    fields.update(
        model=given.model or ("resnet18" if synthetic else "tf_efficientnet_b5"),
        n_d=pick(args.n_d, "n_d", 1024), lr=pick(args.lr, "lr", 1e-4), epochs=pick(args.epochs, "epochs", PAPER_PHASE1[0]),
        threads=pick(args.threads, "threads", None),
        size=tuple(args.size) if args.size else (None if synthetic else (384, 512)),
        weighting=given.weighting or "fixed",
        fixed_weights=args.fixed_weights if args.fixed_weights is not None else [1.0],  # the paper's plain sum
        select="dmd",
    )
    phase2_lr_step = args.phase2_lr_step
    lr_step = args.lr_step
    if not synthetic:
        lr_step = PAPER_PHASE1[1] if lr_step is None else lr_step
        phase2_lr_step = PAPER_PHASE2[1] if phase2_lr_step is None else phase2_lr_step
    try:
        cfg = DMDConfig(**fields, decoders=args.decoders.strip().lower(), mdr=args.mdr,
                        mdr_patch=pick(args.mdr_patch, "mdr_patch", 8), log_m=not args.no_log_m,
                        init_from=args.init_from, lr_step=lr_step, weight_decay=args.weight_decay,
                        relative_fraction=args.relative_fraction)
        runs = plan(cfg, args.phase, args.dmd_variant,
                    phase2_epochs=pick(args.phase2_epochs, "phase2_epochs", PAPER_PHASE2[0]),
                    phase2_lr_step=phase2_lr_step)
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    try:
        summaries = run_plan(runs, report=lambda s: print(s, flush=True))
    except TrainingInterrupted as stop:  # Ctrl-C: the phase's checkpoint is saved; --resume auto goes on
        if int(os.environ.get("RANK", "0")) == 0:
            report_interrupted(stop, argv, base.out_dir)
        return 130
    except (DataFileError, PretrainedWeightsError, FileNotFoundError, ValueError, UserError) as exc:
        print(f"mlrb train: error: {one_line(exc)}", file=sys.stderr)
        return 2
    from mlrb.train.cli import format_comparison
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports
        return 0
    for cfg, s in zip(runs, summaries):
        print(f"\n{cfg.out_dir}: {s['steps']} steps ({s['epochs']:.2f} epochs) in {s['train_seconds']:.1f} s")
        if cfg.stage == "1":
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(s["metrics_after"].items())))
        else:
            print(format_comparison(s["metrics_before"], s["metrics_after"]))
    print(f"{time.perf_counter() - t0:.1f} s in all")
    return 0
