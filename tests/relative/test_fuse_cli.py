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
