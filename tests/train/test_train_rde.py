"""``--task rde``: the RDE trainer on tiny synthetic data (losses, logs, resume, CLI, lists)."""
import json

import numpy as np
import pytest
import torch

from mlrb.relative import RELATIVE_NAMES
from mlrb.train.cli import main as train_main
from mlrb.train.rde import RDETrainer
from mlrb.train.trainer import TrainConfig


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(task="rde", synthetic_train=8, synthetic_val=2, size=(32, 64), n_d=32, batch_size=4, epochs=1,
                lr=1e-3, out_dir=str(tmp_path / name), progress=False)
    base.update(kw)
    return TrainConfig(**base)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rde_trains_logs_and_resumes(tmp_path):
    tr = RDETrainer(tiny(tmp_path, epochs=2, max_steps=3, augment=False))
    assert tr.names == RELATIVE_NAMES
    batch = next(iter(tr._loader(0, 0)))
    losses = tr.compute_losses(batch)
    assert losses.shape == (4, 16) and bool((losses[:, :-1] > 0).all())
    assert bool((losses[:, -1] == 0).all())  # c@5 is 1x2 here: no vertical pair, an empty loss is 0
    summary = tr.fit()
    run = tmp_path / "run"
    recs = [json.loads(x) for x in (run / "periods.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and len(recs[0]["losses"]) == 16  # 2 steps/epoch, periods after each step
    after = summary["metrics_after"]
    assert set(after) >= {"rel_l1", "wkdr", "l1/M17@2", "l1/c@5"} and 0 <= after["wkdr"] <= 1
    assert list(json.loads((run / "run.json").read_text())["names"]) == list(RELATIVE_NAMES)
    # resume to 4 steps from last.pt: same trainer class, position restored
    tr2 = RDETrainer(tiny(tmp_path, epochs=2, max_steps=4, augment=False, resume="auto"))
    assert tr2.global_step == 3
    assert tr2.fit()["steps"] == 4


def test_task_and_trainer_class_must_agree(tmp_path):
    from mlrb.train.trainer import Trainer

    with pytest.raises(ValueError, match="needs its own trainer class"):
        Trainer(tiny(tmp_path))
    with pytest.raises(ValueError, match="needs its own trainer class"):
        RDETrainer(tiny(tmp_path, task="ode"))


def test_resume_from_an_ode_run_is_refused(tmp_path):
    path = tmp_path / "ode.pt"
    torch.save({"format": "mlrb-train-1", "config": {"task": "ode"}}, path)
    with pytest.raises(ValueError, match="not an RDE run"):
        RDETrainer(tiny(tmp_path, resume=str(path)))


def test_disparity_list_joins_the_training_set(tmp_path):
    from PIL import Image

    from mlrb.train.rde_data import DisparityCSV, parse_list

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(tmp_path / f"im{i}.png")
        disp = rng.random((40, 60)).astype(np.float32) + 0.5
        disp[0, :5] = 0  # no measurement
        np.save(tmp_path / f"d{i}.npy", disp)
        rows.append(f"im{i}.png,d{i}.npy")
    (tmp_path / "rel.csv").write_text("\n".join(rows) + "\n")
    ds = DisparityCSV(str(tmp_path / "rel.csv"), size=None)
    s = ds[0]
    assert not bool(s["mask"][0, 0, :5].any()) and bool(s["mask"][0, 1].all())
    np.testing.assert_allclose(s["depth"][0, 1].numpy(), 1.0 / np.load(tmp_path / "d0.npy")[1], rtol=1e-6)
    tr = RDETrainer(tiny(tmp_path, rde_lists=[f"disparity-csv:{tmp_path / 'rel.csv'}"], eval_before=False))
    assert len(tr.train_set) == 10
    with pytest.raises(ValueError, match="KIND:PATH"):
        parse_list("ReDWeb.csv")


def test_cli_task_rde(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = train_main(["--task", "rde", "--size", "32", "64", "--synthetic-train", "8", "--synthetic-val", "2",
                     "--batch-size", "4", "--epochs", "1", "--n-d", "32", "--no-progress", "--no-eval-before",
                     "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "16 losses" in text and "rel_l1" in text
    assert json.loads((out / "run.json").read_text())["config"]["task"] == "rde"
    with pytest.raises(SystemExit):
        train_main(["--rde-list", "disparity-csv:x.csv", "--out", str(tmp_path / "x")])
