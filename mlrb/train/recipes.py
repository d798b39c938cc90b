"""Paper recipes: named sets of TrainConfig defaults (``mlrb train --recipe NAME``).

A recipe fills every TrainConfig field it names unless the user gave that option
explicitly; the settings in force are printed at the start of the run and stored in
run.json ("recipe"). Each setting carries the paper text it comes from. A recipe may
have per-dataset settings (``by_data``), applied over its common ones.

- ``lee-kim-2020``: Lee & Kim, ECCV 2020 (main paper Sec. 4.1-4.2, the public code
  github.com/jaehanlee-mcl/multi-loss-rebalancing-depth), NYUv2 Table 3 / KITTI Table S-2.
- ``amlr-2023``: Yu & Heo, IEEE Access 2023 (Sec. III-IV), KITTI Table 2 / NYUv2 Table 3.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Setting:
    field: str      # TrainConfig field
    value: object
    source: str     # the paper text (or public code) the value comes from


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    settings: tuple[Setting, ...]
    by_data: dict[str, tuple[Setting, ...]] = field(default_factory=dict)
    compare: str = ""  # the tables to compare against

    def settings_for(self, data: str) -> list[Setting]:
        """Common settings, then those of ``data`` (which win)."""
        merged = {s.field: s for s in self.settings}
        merged.update({s.field: s for s in self.by_data.get(data, ())})
        return list(merged.values())


_LK = "Lee & Kim 2020"
_LK_NYU_EVAL = (
    Setting("eval_gt", "full", "public evaluation.py: ground truth at its 480x640 resolution"),
    Setting("eval_upsample", "bicubic", "public evaluation.py: nn.Upsample(size=[480, 640], mode='bicubic')"),
    Setting("eval_crop", "lee_kim_nyu", "public evaluation.py: depth[:, :, 0 + 20:480 - 20, 0 + 24:640 - 24]"),
)
LEE_KIM_2020 = Recipe(
    name="lee-kim-2020",
    title="Lee & Kim, ECCV 2020: the 78-loss space with loss rebalancing (Proposed (Dense), NYUv2)",
    settings=(
        Setting("model", "densenet161", f"{_LK} Sec. 4.1: 'we test two backbones, DenseNet161 and PNASNet' "
                                        "(Proposed (Dense); --model pnasnet5large --batch-size 8 for PNAS)"),
        Setting("pretrained", "cache", f"{_LK} Sec. 4.1: ImageNet-pretrained encoder 'after removing "
                                       "their classification layers' (timm's weights, local cache only)"),
        Setting("size", (288, 384), f"{_LK} Sec. 4.1: 'The spatial resolution of an input image to the encoder "
                                    "is 288 x 384'"),
        Setting("n_d", 1024, f"{_LK} supplement Fig. S-8: n_d = 1024"),
        Setting("select", "all", f"{_LK} Sec. 3.1: the 78 losses of Table 1"),
        Setting("weighting", "rebalance", f"{_LK} Sec. 3.2: Eq. 9 initialization, Eq. 11 rebalancing"),
        Setting("rebalance_init", True, f"{_LK} Table 5(d) row 4 (I and R); row 3 is --no-rebalance-init"),
        Setting("lambda_start", 3.0, f"{_LK} Sec. 4.1: 'lambda is initialized to 3 at the first epoch'"),
        Setting("lambda_end", -3.0, f"{_LK} Sec. 4.1: 'gradually decreased to -3 until the fifth epoch'"),
        Setting("lambda_step", 1.5, f"{_LK} Sec. 4.1: 3 -> -3 over epochs 1-5"),
        Setting("periods_per_epoch", 4, f"{_LK} Sec. 4.1: initialization after 1/4 epoch, rebalancing every 1/4 epoch"),
        Setting("epochs", 20, f"{_LK} Sec. 4.1: 'Adam optimizer for 20 epochs'"),
        Setting("lr", 1e-4, f"{_LK} Sec. 4.1: 'with a learning rate of 10^-4'"),
        Setting("lr_schedule", "constant", f"{_LK} Sec. 4.1 (no schedule mentioned; public train.py keeps it)"),
        Setting("batch_size", 12, f"{_LK} Sec. 4.1: 'The batch size is set to 12 and 8 for the DenseNet-based "
                                  "and PNASNet-based networks'"),
        Setting("augment", True, f"{_LK} Sec. 4.1: 'we adopt the augmentation policy of [16]' (Hu et al.); public "
                                 "get_data.py: flip, Lighting(0.1), ColorJitter(0.4, 0.4, 0.4)"),
        Setting("rotate", 5.0, "public get_data.py: RandomRotate(5)"),
        Setting("random_crop", False, "public get_data.py: Scale(288), no crop"),
        Setting("decoder", "fig-s8", f"{_LK} supplement Fig. S-8"),
        Setting("tta", "none", "public evaluation.py: a single forward pass"),
        *_LK_NYU_EVAL,
    ),
    by_data={
        # Table S-2: 'we follow the Eigen et al.'s protocol, including the split'.
        "bts-kitti": (
            Setting("eval_gt", "full", f"{_LK} supplement Sec. S-2: Eigen et al.'s protocol (sparse ground truth)"),
            Setting("eval_upsample", "bicubic", "as the NYUv2 protocol of the public code"),
            Setting("eval_crop", "kitti_eigen", f"{_LK} supplement Sec. S-2: 'we follow the Eigen et al.'s protocol'"),
        ),
        "make3d": (
            Setting("eval_gt", "full", "Make3D C1 protocol: ground truth at its stored resolution"),
            Setting("eval_upsample", "bicubic", "as the NYUv2 protocol of the public code"),
            Setting("eval_crop", None, f"{_LK} supplement Table S-7: 'Evaluated in 0-70m depth range' (caps, no crop)"),
            Setting("model", "pnasnet5large", f"{_LK} Sec. 4.2: 'For experiments on Make3D, we train Proposed (PNAS)'"),
            Setting("batch_size", 8, f"{_LK} Sec. 4.1: batch 8 for PNASNet"),
        ),
    },
    compare="NYUv2 Table 3, Proposed (Dense): d1 85.0%, d2 96.9%, d3 99.2%, RMSE 0.457, ARD 0.127, log10 0.053, "
            "RMSE_log 0.160, RMSE_si 0.128, SRD 0.088 (PNAS: 87.0%, 0.430, 0.119). Table 5(d) (d1 / RMSE): I+R 87.0% / 0.434; "
            "R without I 85.6% / 0.459. KITTI Table S-2: d1 86.4%, RMSE 4.512, RMSE_log 0.176, ARD 0.115. "
            "Make3D Table S-7 (ODE, 0-70 m): RMSE 5.87, ARD 0.231, log10 0.082.",
)

_AM = "Yu & Heo 2023"
AMLR_2023 = Recipe(
    name="amlr-2023",
    title="Yu & Heo, IEEE Access 2023: AMLR (Swin-v2 encoder, SiLU deconvolution decoder, AMLR pair)",
    settings=(
        Setting("decoder", "amlr", f"{_AM} Sec. III-A, Fig. 2: deconvolution decoder, channels decreased gradually, "
                                   "SiLU after every layer, no skip connections"),
        Setting("model", "swinv2_large_window12to24_192to384", f"{_AM} Fig. 2: 'a pretrained Swin Transformer v2' "
                                                               "(Swin-v2-L; their MIM weights: --pretrained FILE)"),
        Setting("pretrained", "cache", f"{_AM} Sec. III-A: pretrained encoder (Xie et al.'s MIM weights)"),
        Setting("select", "AMLR", f"{_AM} Sec. III-B: the scale-invariant loss and the gradient loss"),
        Setting("weighting", "amlr", f"{_AM} Sec. III-C: AMLR (Eqs. 8-12); r = 0.99 / 0.01 in AMLRRebalancer"),
        Setting("batch_size", 6, f"{_AM} Sec. IV-A: 'with 30 epochs and batch size of 6'"),
        Setting("lr", 5e-4, f"{_AM} Sec. IV-A: 'a midpoint learning rate of 5e-4'"),
        Setting("lr_min", 3e-5, f"{_AM} Sec. IV-A: 'an initial learning rate of 3e-5'"),
        Setting("lr_schedule", "poly-updown", f"{_AM} Sec. IV-A: 'gradually increased until the midpoint ... then "
                                              "reverted to its initial value ... updated after every single batch' "
                                              "(Xie et al.'s power-0.9 curve)"),
        Setting("augment", True, f"{_AM} Sec. IV-B: 'common data augmentations such as horizontal flipping'"),
        Setting("rotate", 0.0, f"{_AM}: no rotation mentioned"),
        Setting("random_crop", True, f"{_AM} Sec. IV-B: 'horizontal flipping and random cropping'"),
        Setting("tta", "flip+sw", f"{_AM} Sec. IV-A: 'the flip test and shifted window test' (Table 1, S/W, Flip)"),
        Setting("eval_gt", "full", "ground truth at its stored resolution"),
        Setting("eval_upsample", "bilinear", "prediction already at the test image's resolution"),
        Setting("epochs", 30, f"{_AM} Sec. IV-A: KITTI 30 epochs"),
        Setting("size", (352, 1216), f"{_AM} Sec. IV-B: 'we crop image to size of 1216x352'"),
        Setting("eval_crop", "kitti_garg", f"{_AM} Sec. IV-B: 'eigen split and garg crop', depth 0-80 m"),
    ),
    by_data={
        "bts-nyu": (
            Setting("epochs", 20, f"{_AM} Sec. IV-A: 'For the NYUv2 dataset, we executed training for a total of 20 epochs'"),
            Setting("size", (448, 576), f"{_AM} Sec. IV-B: 'Crop was done with the size of 448x576'"),
            Setting("eval_crop", "nyu_eigen", "the common NYUv2 protocol (Eigen crop), depth 0-10 m"),
        ),
        "nyu-csv": (
            Setting("epochs", 20, f"{_AM} Sec. IV-A: NYUv2 20 epochs"),
            Setting("size", (448, 576), f"{_AM} Sec. IV-B: 'Crop was done with the size of 448x576'"),
            Setting("eval_crop", "nyu_eigen", "the common NYUv2 protocol (Eigen crop), depth 0-10 m"),
        ),
    },
    compare="KITTI Table 1/2/4 (Eigen split, Garg crop, 0-80 m), S/W+Flip: ARD 0.049, SRD 0.137, RMSE 1.971, "
            "RMSE_log 0.074, log10 0.021, d1 0.978, d2 0.998, d3 0.999 (no TTA: ARD 0.053, RMSE 2.065). Table 4: "
            "only L_si ARD 0.050 / RMSE 1.981; Lee et al. rebalancing ARD 0.049 / RMSE 2.000. NYUv2 Table 3: ARD "
            "0.087, RMSE 0.300, log10 0.037, d1 0.935, d2 0.991, d3 0.998.",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (LEE_KIM_2020, AMLR_2023)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def apply_recipe(cfg, name: str, explicit: set[str] | frozenset[str] = frozenset()):
    """A copy of TrainConfig ``cfg`` with recipe ``name``'s settings for ``cfg.data`` filled
    in, except the fields in ``explicit`` (options the user gave). Returns (cfg, applied)
    where ``applied`` lists the settings used, for printing and run.json."""
    recipe = get_recipe(name)
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes, applied = {"recipe": name}, []
    for s in recipe.settings_for(cfg.data):
        if s.field not in fields:
            raise RuntimeError(f"recipe {name} sets unknown TrainConfig field {s.field!r}")
        kept = s.field in explicit
        if not kept:
            changes[s.field] = s.value
        applied.append({"field": s.field, "value": getattr(cfg, s.field) if kept else s.value,
                        "recipe_value": s.value, "overridden": kept, "source": s.source})
    return dataclasses.replace(cfg, **changes), applied


def format_settings(name: str, applied: list[dict]) -> str:
    """The lines printed at the start of a recipe run."""
    recipe = get_recipe(name)
    lines = [f"recipe {name}: {recipe.title}"]
    for a in applied:
        mark = f"  (recipe: {a['recipe_value']!r}, overridden)" if a["overridden"] else ""
        lines.append(f"  {a['field']:<18} {a['value']!r}{mark}")
    return "\n".join(lines)
