"""`mlrb eval` on tiny generated folders (.npy and 16-bit .png)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mlrb.cli import main as cli_main
from mlrb.metrics import (METRIC_KEYS, clamp_prediction, depth_metrics, kendall_tau,
                          valid_mask)
from mlrb.metrics.evaluate import load_depth, main


def _write_png(path, depth_m, scale):
    Image.fromarray(np.round(depth_m * scale).astype(np.uint16)).save(path)


@pytest.fixture
def nyu_folders(tmp_path):
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    (gt_dir / "scene").mkdir(parents=True)
    (pred_dir / "scene").mkdir(parents=True)
    gts, preds = [], []
    for i in range(3):
        gt = rng.uniform(0.5, 9.5, size=(48, 64))
        gt[:4] = 0.0  # missing depth
        if i == 2:
            gt[:] = 0.0  # no valid pixel at all: skipped
        pred = gt * rng.uniform(0.8, 1.25, size=gt.shape) + 0.1
        _write_png(gt_dir / "scene" / f"{i:04d}.png", gt, 1000.0)
        np.save(pred_dir / "scene" / f"{i:04d}.npy", pred.astype(np.float32))
        gts.append(np.round(gt * 1000) / 1000)
        preds.append(pred.astype(np.float32))
    (pred_dir / "extra.npy").write_bytes(b"")  # predictions without gt are ignored
    return tmp_path, np.stack(gts), np.stack(preds)


def test_eval_matches_library_and_prints_table(nyu_folders, capsys):
    root, gts, preds = nyu_folders
    out_json = root / "res.json"
    rc = main([str(root / "pred"), str(root / "gt"), "--dataset", "nyu", "--kendall", "--wkdr",
               "--n-pairs", "500", "--json", str(out_json), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "images: 2" in text and "skipped (no valid gt): 1" in text and "nyu_eigen" in text
    assert all(k in text for k in METRIC_KEYS + ("kendall_tau", "wkdr_neq"))
    res = json.loads(out_json.read_text())
    want = depth_metrics(torch.from_numpy(preds), torch.from_numpy(gts), min_depth=1e-3,
                         max_depth=10.0, crop="nyu_eigen")
    for k in METRIC_KEYS:
        assert res["metrics"][k] == pytest.approx(want[k], rel=1e-6), k
    g = torch.from_numpy(gts[:2])
    p = clamp_prediction(torch.from_numpy(preds[:2]).double(), min_depth=1e-3, max_depth=10.0)
    mask = valid_mask(g, min_depth=1e-3, max_depth=10.0, crop="nyu_eigen")
    assert res["metrics"]["kendall_tau"] == pytest.approx(kendall_tau(p, g, mask), rel=1e-9)
    assert res["images"] == 2 and res["skipped"] == 1
    assert 0.0 <= res["metrics"]["wkdr"] <= 1.0
    # a looser ordinal threshold makes more pairs "equivalent" and changes WKDR
    assert main([str(root / "pred"), str(root / "gt"), "--dataset", "nyu", "--wkdr",
                 "--n-pairs", "500", "--wkdr-threshold", "0.5", "--json", str(out_json),
                 "--no-progress"]) == 0
    assert json.loads(out_json.read_text())["metrics"]["wkdr"] != res["metrics"]["wkdr"]


def test_eval_via_cli_kitti_png_predictions(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "g").mkdir()
    (tmp_path / "p").mkdir()
    gt = rng.uniform(1.0, 70.0, size=(37, 124))  # 1.1 * gt stays under the 80 m cap
    _write_png(tmp_path / "g" / "a.png", gt, 256.0)
    _write_png(tmp_path / "p" / "a.png", gt * 1.1, 256.0)
    assert cli_main(["eval", str(tmp_path / "p"), str(tmp_path / "g"), "--dataset", "kitti",
                     "--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["crop"] == "kitti_garg" and res["max_depth"] == 80.0
    # 16-bit quantisation at 1/256 m moves the 10% error only slightly
    assert res["metrics"]["abs_rel"] == pytest.approx(0.1, abs=2e-3)
    assert res["metrics"]["d1"] == 1.0
    assert load_depth(tmp_path / "g" / "a.png", 256.0) == pytest.approx(gt, abs=1 / 512)


def test_eval_errors(tmp_path, capsys):
    g, p = tmp_path / "g", tmp_path / "p"
    g.mkdir()
    p.mkdir()
    np.save(g / "a.npy", np.full((6, 8), 2.0))
    np.save(g / "b.npy", np.full((6, 8), 2.0))
    np.save(p / "a.npy", np.full((6, 8), 2.5))
    assert main([str(p), str(g), "--dataset", "nyu", "--no-progress"]) == 1
    assert "without a prediction" in capsys.readouterr().err
    np.save(p / "b.npy", np.full((3, 4), 2.5))  # wrong size
    assert main([str(p), str(g), "--dataset", "nyu", "--crop", "none", "--no-progress"]) == 1
    assert "--resize" in capsys.readouterr().err
    assert main([str(p), str(g), "--min-depth", "0.001", "--max-depth", "10", "--resize",
                 "--no-progress"]) == 0
    assert "0.2500" in capsys.readouterr().out  # abs_rel = 0.5 / 2
    assert main([str(p), str(g), "--no-progress"]) == 1  # no caps
    assert "--dataset" in capsys.readouterr().err
    Image.fromarray(np.full((6, 8), 200, dtype=np.uint8)).save(g / "c.png")
    np.save(p / "c.npy", np.full((6, 8), 2.5))
    assert main([str(p), str(g), "--dataset", "nyu", "--resize", "--no-progress"]) == 1
    assert "16-bit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "mars"])


def test_broken_files_and_bad_options_are_one_line_errors(tmp_path, capsys):
    g, p = tmp_path / "g", tmp_path / "p"
    g.mkdir()
    p.mkdir()
    _write_png(g / "a.png", np.full((12, 16), 2.0), 1000.0)
    np.save(p / "a.npy", np.full((12, 16), 2.5))
    ok = cli_main(["eval", str(p), str(g), "--dataset", "nyu", "--no-progress"])
    assert ok == 0
    capsys.readouterr()

    def fails(*extra, file, what):
        assert cli_main(["eval", str(p), str(g), "--dataset", "nyu", "--no-progress", *extra]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"mlrb eval: error: {file}: ") and what in err, err

    png = (g / "a.png").read_bytes()
    (g / "a.png").write_bytes(png[: len(png) // 2])
    fails(file=g / "a.png", what="not a readable PNG")
    (g / "a.png").write_bytes(png)
    npy = (p / "a.npy").read_bytes()
    (p / "a.npy").write_bytes(npy[:100])
    fails(file=p / "a.npy", what="not a readable .npy")
    np.save(p / "a.npy", np.array(["a", "b"]))
    fails(file=p / "a.npy", what="real numbers")
    np.save(p / "a.npy", np.zeros((0, 0)))
    fails("--resize", file=p / "a.npy", what="empty depth map")
    np.save(p / "a.npy", np.full((12, 16), 2.5))
    fails("--json", str(tmp_path / "missing" / "r.json"), file=tmp_path / "missing" / "r.json",
          what="does not exist")
    assert cli_main(["eval", str(p), str(g), "--dataset", "nyu", "--min-depth", "20", "--n-pairs", "0"]) == 1
    err = capsys.readouterr().err
    assert "--min-depth" in err and "--n-pairs" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, option", [
    (["--min-depth", "0"], "--min-depth"),  # was blamed on the first ground-truth file
    (["--wkdr", "--seed", "99999999999999999999"], "--seed"),  # was "g/a.png: Overflow ..."
    (["--wkdr", "--seed", str(-2**63 - 1)], "--seed"),
    (["--wkdr", "--n-pairs", "100000000000"], "--n-pairs"),  # was an out-of-memory traceback
    (["--json", "."], "--json"),
])
def test_bad_option_values_name_the_option_not_a_file(tmp_path, capsys, extra, option):
    g, p = tmp_path / "g", tmp_path / "p"
    g.mkdir()
    p.mkdir()
    np.save(g / "a.npy", np.full((4, 5), 3.0))
    np.save(p / "a.npy", np.full((4, 5), 3.3))
    rc = cli_main(["eval", str(p), str(g), "--min-depth", "0.001", "--max-depth", "10", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert option in err and "a.npy" not in err, err
