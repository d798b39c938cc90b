"""Paper recipes: defaults that explicit options override, printed and stored; end to end at tiny size."""
import json

import pytest
import torch

from mlrb.train.cli import build_parser, main as train_main, recipe_config
from mlrb.train.recipes import RECIPES, apply_recipe
from mlrb.train.trainer import TrainConfig

TINY_SWIN = '{"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}'


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_of(argv):
    return recipe_config(build_parser().parse_args(argv), argv)


def test_recipe_fills_defaults_and_explicit_options_win():
    cfg, applied = cfg_of(["--recipe", "lee-kim-2020", "--epochs", "3", "--no-augment", "--lambda", "2", "-2"])
    assert cfg.recipe == "lee-kim-2020"
    # From the recipe (the CLI's own defaults would differ: resnet18, synthetic sizes, lr 3e-4).
    assert (cfg.model, cfg.size, cfg.n_d, cfg.batch_size, cfg.lr, cfg.rotate) == ("densenet161", (288, 384), 1024,
                                                                                  12, 1e-4, 5.0)
    assert (cfg.eval_gt, cfg.eval_upsample, cfg.eval_crop) == ("full", "bicubic", "lee_kim_nyu")
    # Given explicitly: kept, and marked as overridden in what is printed / stored.
    assert (cfg.epochs, cfg.augment, cfg.lambda_start, cfg.lambda_end) == (3, False, 2.0, -2.0)
    by_field = {a["field"]: a for a in applied}
    assert by_field["epochs"]["overridden"] and by_field["epochs"]["recipe_value"] == 20
    assert not by_field["lr"]["overridden"] and "10^-4" in by_field["lr"]["source"]
    # An explicit value equal to the parser default still counts as explicit.
    cfg, _ = cfg_of(["--recipe", "amlr-2023", "--model", "resnet18", "--no-rebalance-init"])
    assert cfg.model == "resnet18" and cfg.decoder == "amlr" and cfg.rebalance_init is False


def test_recipes_have_per_dataset_settings_and_sources():
    cfg, _ = apply_recipe(TrainConfig(data="bts-nyu"), "amlr-2023")
    assert (cfg.size, cfg.epochs, cfg.eval_crop) == ((448, 576), 20, "nyu_eigen")
    cfg, _ = apply_recipe(TrainConfig(data="bts-kitti"), "amlr-2023")
    assert (cfg.size, cfg.epochs, cfg.batch_size, cfg.eval_crop, cfg.tta) == ((352, 1216), 30, 6, "kitti_garg",
                                                                               "flip+sw")
    assert (cfg.lr, cfg.lr_min, cfg.lr_schedule) == (5e-4, 3e-5, "poly-updown")
    cfg, _ = apply_recipe(TrainConfig(data="bts-kitti"), "lee-kim-2020")
    assert cfg.eval_crop == "kitti_eigen"
    for recipe in RECIPES.values():
        for data in (None, *recipe.by_data):
            for s in recipe.settings_for(data or "synthetic"):
                assert s.source and hasattr(TrainConfig(), s.field)
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe(TrainConfig(), "nope")


def test_unknown_recipe_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--recipe", "lee-kim-2021"])
    assert e.value.code == 2 and "unknown recipe 'lee-kim-2021'" in capsys.readouterr().err


def test_list_recipes(capsys):
    assert train_main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "lee-kim-2020" in out and "amlr-2023" in out and "RandomRotate(5)" in out


def _run(tmp_path, capsys, argv):
    out = tmp_path / "run"
    assert train_main([*argv, "--pretrained", "none", "--synthetic-train", "8", "--synthetic-val", "2",
                       "--batch-size", "4", "--epochs", "2", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return printed, run, summary


def test_lee_kim_recipe_end_to_end(tmp_path, capsys):
    printed, run, summary = _run(tmp_path, capsys, ["--recipe", "lee-kim-2020", "--model", "resnet18",
                                                    "--n-d", "32", "--size", "32", "48"])
    assert "recipe lee-kim-2020" in printed and "rotate             5.0" in printed
    assert "rows 20:460, cols 24:616" in printed  # the protocol of the printed numbers
    assert run["recipe"]["name"] == "lee-kim-2020" and run["config"]["rotate"] == 5.0
    assert {s["field"] for s in run["recipe"]["settings"]} >= {"model", "lr", "eval_crop"}
    assert "Lee & Kim's evaluation.py" in run["eval_protocol"]
    assert summary["steps"] == 4 and 0 < summary["metrics_after"]["abs_rel"] < 10


def test_amlr_recipe_end_to_end(tmp_path, capsys):
    printed, run, summary = _run(tmp_path, capsys, ["--recipe", "amlr-2023", "--model", "swinv2_tiny_window8_256",
                                                    "--model-kwargs", TINY_SWIN, "--size", "32", "64"])
    assert "recipe amlr-2023" in printed and "shifted-window + flip" in printed
    assert run["config"]["decoder"] == "amlr" and run["names"] == ["Si", "Gr"]
    assert run["config"]["random_crop"] and run["config"]["tta"] == "flip+sw"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    # The poly-updown schedule: the last of 4 steps is back near lr_min, below the midpoint lr.
    from mlrb.train.schedule import lr_at
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_at("poly-updown", 3, 4, 5e-4, 3e-5))
    assert ckpt["optimizer"]["param_groups"][0]["lr"] < 5e-4
    assert summary["steps"] == 4 and 0 < summary["metrics_after"]["abs_rel"] < 10


@pytest.mark.parametrize("argv,message", [
    (["--model-kwargs", "[1]"], "--model-kwargs must be a JSON object"),
    (["--model-kwargs", "{bad"], "--model-kwargs is not valid JSON"),
    (["--rotate", "-1"], "rotation degrees"),
])
def test_recipe_options_fail_in_one_line(tmp_path, capsys, argv, message):
    try:
        code = train_main([*argv, "--size", "32", "32", "--synthetic-train", "4", "--batch-size", "4",
                           "--n-d", "32", "--no-progress", "--out", str(tmp_path / "r")])
    except SystemExit as e:  # argparse's own one-line error
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_only_scores_a_checkpoint_with_the_recipe_protocol(tmp_path, capsys):
    _, _, summary = _run(tmp_path, capsys, ["--recipe", "lee-kim-2020", "--model", "resnet18",
                                            "--n-d", "32", "--size", "32", "48"])
    common = ["--recipe", "lee-kim-2020", "--model", "resnet18", "--size", "32", "48", "--synthetic-val", "2",
              "--batch-size", "4", "--pretrained", "none"]
    assert train_main([*common, "--n-d", "32", "--eval-only", summary["checkpoint"]]) == 0
    out = capsys.readouterr().out
    assert "rows 20:460, cols 24:616" in out
    abs_rel = float(next(line for line in out.splitlines() if line.split()[:1] == ["abs_rel"]).split()[-1])
    assert abs_rel == pytest.approx(summary["metrics_after"]["abs_rel"], abs=1e-4)
    # A checkpoint of another network, or no checkpoint: one line each.
    assert train_main([*common, "--n-d", "64", "--eval-only", summary["checkpoint"]]) == 2
    assert "does not fit the network" in capsys.readouterr().err
    assert train_main([*common, "--eval-only", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")  # torch.load's message for it has two lines
    assert train_main([*common, "--eval-only", str(tmp_path / "rgb.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrb train: error: cannot read checkpoint") and len(err.splitlines()) == 1, err
