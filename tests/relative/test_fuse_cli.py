"""``mlrb fuse`` on two tiny runs: gammas fitted and saved, the side-by-side table, clear errors."""
import json

import pytest
import torch

from mlrb.cli import main as mlrb_main
from mlrb.relative import GAMMA_NAMES
from mlrb.train.rde import RDETrainer
from mlrb.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    common = dict(synthetic_train=8, synthetic_val=4, size=(32, 64), n_d=32, batch_size=4, epochs=1, max_steps=1,
                  progress=False, eval_before=False)
    Trainer(TrainConfig(select="D0", out_dir=str(root / "ode"), **common)).fit()
    RDETrainer(TrainConfig(task="rde", out_dir=str(root / "rde"), **common)).fit()
    yield root
    torch.set_num_threads(n)


def test_fuse_fits_saves_and_prints(runs, capsys):
    out = runs / "fusion"
    rc = mlrb_main(["fuse", "--ode", str(runs / "ode"), "--rde", str(runs / "rde"), "--out", str(out),
                    "--n-pairs", "300", "--no-progress", "--sweep"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ODE + RDE" in text and "abs_rel" in text and "wkdr_neq" in text
    saved = json.loads((out / "gammas.json").read_text())
    assert list(saved["ode_rde"]) == list(GAMMA_NAMES) and all(0 <= g <= 1 for g in saved["ode_rde"].values())
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"ODE", "ODE + RDE", "RDE"} and "abs_rel" not in res["RDE"] and "wkdr" in res["RDE"]
    assert res["ODE + RDE"]["wkdr best"] <= res["ODE + RDE"]["wkdr"] and "balanced t" in res["RDE"]
    # never over an existing folder
    rc = mlrb_main(["fuse", "--ode", str(runs / "ode"), "--rde", str(runs / "rde"), "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_fuse_errors_are_one_line(runs, capsys):
    for argv, msg in ((["--ode", str(runs / "rde"), "--rde", str(runs / "rde")], "is a 'rde' run"),
                      (["--ode", str(runs / "ode"), "--rde", str(runs / "ode")], "is a 'ode' run"),
                      (["--ode", str(runs / "nope"), "--rde", str(runs / "rde")], "run folder not found"),
                      (["--ode", str(runs / "ode"), "--rde", str(runs / "rde"), "--max-train", "0"], "must be >= 1")):
        assert mlrb_main(["fuse", *argv, "--out", str(runs / "x")]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_diw_whdr_of_an_rde_run(runs, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "DIW_test").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        Image.fromarray((rng.random((30, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "DIW_test" / f"{i}.png")
        lines += [f"./DIW_test/{i}.png", "3,4,25,40,>,50,30"]
    (tmp_path / "diw.csv").write_text("\n".join(lines) + "\n")
    base = ["diw", "--csv", str(tmp_path / "diw.csv"), "--rde", str(runs / "rde")]
    assert mlrb_main([*base, "--images", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["pairs"] == 2 and res["whdr"] in (0.0, 0.5, 1.0)
    assert mlrb_main(base) == 2 and "needs --images" in capsys.readouterr().err
    assert mlrb_main(["diw", "--csv", str(tmp_path / "diw.csv"), "--rde", str(runs / "ode"), "--images",
                      str(tmp_path)]) == 2
    assert "is a 'ode' run" in capsys.readouterr().err
