"""``mlrb train --arch dmd``: two phases, Baseline and single-phase runs on tiny synthetic data."""
import json
import warnings

import pytest
import torch

from mlrb.models.dmd_losses import DMD_NAMES, N_NAMES
from mlrb.train.cli import main as train_main
from mlrb.train.dmd import DMDConfig, DMDTrainer, plan, run_plan


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, **kw) -> DMDConfig:
    base = dict(synthetic_train=8, synthetic_val=2, size=(32, 48), model="test_efficientnet", n_d=32, batch_size=4,
                epochs=1, lr=1e-3, out_dir=str(tmp_path / "run"), progress=False, mdr_patch=4,
                weighting="fixed", fixed_weights=[1.0], eval_before=False)
    base.update(kw)
    return DMDConfig(**base)


def _records(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_two_phases_share_the_encoder_and_relative_samples_are_masked(tmp_path):
    runs = plan(tiny(tmp_path, relative_fraction=0.5, lr_step=1), "both", phase2_epochs=1, phase2_lr_step=1)
    assert [r.stage for r in runs] == ["1", "2"] and runs[1].lr_step == 1
    summaries = run_plan(runs, report=lambda s: None)
    one, two = (tmp_path / "run" / "phase1"), (tmp_path / "run" / "phase2")
    assert json.loads((one / "run.json").read_text())["names"] == ["G", *N_NAMES]
    assert json.loads((two / "run.json").read_text())["names"] == list(DMD_NAMES)
    assert set(summaries[0]["metrics_after"]) == {"kendall_tau", "n_l1"}  # phase 1 has no metric depth
    assert "abs_rel" in summaries[1]["metrics_after"]
    for rec in _records(two / "periods.jsonl"):
        assert all(v == v and abs(v) < 1e6 for v in rec["losses"])
    # Phase 2 starts from phase 1's encoder, G-Net and N-Net: build it again and compare.
    p1 = torch.load(one / "checkpoints" / "last.pt", weights_only=False)["model"]
    fresh = DMDTrainer(DMDConfig(**{**runs[1].__dict__, "out_dir": str(tmp_path / "again")}))
    state = fresh.model.state_dict()
    for key in ("encoder.model.model.conv_stem.weight", "nets.g.head_conv.weight", "nets.n.conv_out.weight"):
        assert torch.equal(state[key], p1[key]), key
    # Paper schedule pieces: lr x 0.1 per lr_step epochs, Adam weight decay 1e-4.
    assert fresh.lr_at(0) == pytest.approx(1e-3) and fresh.lr_at(2) == pytest.approx(1e-5)
    assert fresh.optimizer.param_groups[0]["weight_decay"] == 1e-4
    # Resuming the whole plan skips the finished runs.
    again = run_plan(plan(tiny(tmp_path, relative_fraction=0.5, lr_step=1, resume="auto"), "both",
                          phase2_epochs=1, phase2_lr_step=1), report=lambda s: None)
    assert [s["steps"] for s in again] == [s["steps"] for s in summaries]


def test_relative_samples_leave_m_losses_out(tmp_path):
    tr = DMDTrainer(tiny(tmp_path, relative_fraction=1.0, init_from=None))
    batch = next(iter(tr._loader(0, 0)))
    assert not bool(batch["metric"].any())
    losses, mask = tr.compute_losses(batch)
    rel = [n in ("G",) + N_NAMES for n in tr.names]
    assert mask.tolist() == [rel] * 4
    total = tr.train_step(batch)
    assert torch.isfinite(total)
    rec = tr.end_period()  # no sample had an M-side loss: logged and kept at 0, weights untouched
    m_cols = [i for i, r in enumerate(rel) if not r]
    assert all(rec["losses"][i] == 0.0 for i in m_cols) and all(rec["losses"][i] > 0 for i in range(2))
    assert all(tr.weighter.last_mean[i] == 0.0 for i in m_cols)


def test_baseline_and_single_phase_variants(tmp_path):
    (base,) = plan(tiny(tmp_path, out_dir=str(tmp_path / "b"), max_steps=1), variant="baseline")
    (single,) = plan(tiny(tmp_path, out_dir=str(tmp_path / "s"), max_steps=1), variant="single-phase")
    tb, ts = DMDTrainer(base), DMDTrainer(single)
    assert tb.names == ("M", "Mx@0.5", "My@0.5", "Mx@0.25", "My@0.25", "Mx@0.125", "My@0.125")
    assert set(tb.model.nets) == {"m"} and tb.model.nets["m"].mdr is None
    assert ts.names == DMD_NAMES and set(ts.model.nets) == {"g", "n", "m"}
    for tr in (tb, ts):
        assert tr.fit()["steps"] == 1


def test_cli(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = train_main(["--arch", "dmd", "--phase", "1", "--synthetic-train", "8", "--synthetic-val", "2",
                         "--size", "32", "48", "--n-d", "32", "--batch-size", "4", "--epochs", "1", "--model", "test_efficientnet",
                         "--out", str(tmp_path / "c"), "--no-progress", "--no-eval-before"])
    assert rc == 0
    assert "kendall_tau" in capsys.readouterr().out
    assert train_main(["--arch", "dmd", "--phase", "2", "--out", str(tmp_path / "d")]) == 2
    assert "--init-from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: bad choice
        train_main(["--arch", "dmd", "--mdr", "half"])
    assert exc.value.code == 2
    rc = train_main(["--arch", "dmd", "--phase", "2", "--init-from", str(tmp_path / "nope.pt"),
                     "--size", "32", "48", "--n-d", "32", "--out", str(tmp_path / "e"), "--no-progress"])
    assert rc == 2 and "phase-1 checkpoint not found" in capsys.readouterr().err


TINY_CLI = ["--synthetic-train", "4", "--synthetic-val", "2", "--size", "32", "32", "--n-d", "32", "--batch-size", "2",
            "--epochs", "1", "--model", "test_efficientnet", "--no-progress", "--no-eval-before"]


def _rejected(tmp_path, capsys, argv, *names):
    """``mlrb train --arch dmd argv`` fails with one line naming ``names``, before any run folder is made."""
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = train_main(["--arch", "dmd", *TINY_CLI, *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("mlrb train: error: "), err
    for name in names:
        assert name in err, err
    assert not out.exists()  # nothing trained, --out still free
    return err


@pytest.mark.parametrize("argv, option", [
    (["--phase2-epochs", "0"], "--phase2-epochs"),              # used to fail after phase 1 had run
    (["--phase2-lr-step", "0"], "--phase2-lr-step"),
    (["--phase", "2", "--init-from", "x.pt", "--phase2-epochs", "0"], "--phase2-epochs"),
    (["--lr-step", "0"], "--lr-step"),
    (["--weight-decay", "nan"], "--weight-decay"),              # used to train into a non-finite loss
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--weight-decay=-1e-4"], "--weight-decay"),
    (["--mdr-patch", "0"], "--mdr-patch"),                      # used to divide by zero
    (["--mdr-patch", "-1"], "--mdr-patch"),
    (["--mdr-patch", "64"], "--mdr-patch"),                     # no 2 patches at 32x32: phase 2 only, checked first
    (["--relative-fraction", "-0.5"], "--relative-fraction"),
    (["--decoders", "gx"], "--decoders"),
])
def test_bad_options_are_one_line_before_training(tmp_path, capsys, argv, option):
    _rejected(tmp_path, capsys, argv, option)


@pytest.mark.parametrize("argv", [
    ["--decoders", "g", "--phase", "1"],                        # used to train, then KeyError 'N' at evaluation
    ["--decoders", "g", "--dmd-variant", "single-phase"],
    ["--decoders", "gm"],                                       # phase 1 of 'both' would be G-Net alone
])
def test_decoders_without_n_net_or_m_net_are_rejected(tmp_path, capsys, argv):
    _rejected(tmp_path, capsys, argv, "--decoders")


def test_unreadable_init_from_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello\n")                                   # used to be an UnpicklingError traceback
    err = _rejected(tmp_path, capsys, ["--phase", "2", "--init-from", str(bad)], "--init-from", str(bad))
    assert "--resume" not in err
    real = tmp_path / "real.pt"
    torch.save({"format": "mlrb-train-1", "config": {"arch": "dmd", "stage": "1"},
                "model": {"w": torch.zeros(4096)}}, real)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real.read_bytes()[:5000])                   # a copy cut short: used to be an OSError traceback
    _rejected(tmp_path, capsys, ["--phase", "2", "--init-from", str(cut)], "--init-from", str(cut))
    # A readable checkpoint of another run kind, and one of another network: named, no traceback.
    torch.save({"format": "mlrb-train-1", "config": {"arch": "ode"}, "model": {}}, real)
    _rejected(tmp_path, capsys, ["--phase", "2", "--init-from", str(real)], "--init-from", "not a phase-1 checkpoint")
    torch.save({"format": "mlrb-train-1", "config": {"arch": "dmd", "stage": "1"},
                "model": {"nets.n.conv_out.weight": torch.zeros(7)}}, real)
    _rejected(tmp_path, capsys, ["--phase", "2", "--init-from", str(real)], "--init-from", "does not fit")


def test_ctrl_c_says_how_to_resume_the_plan(tmp_path, capsys, monkeypatch):
    """Ctrl-C in a DMD phase (a TrainingInterrupted from the trainer): the saved checkpoint and
    the command that resumes the plan, as for `mlrb train`, not a bare "interrupted"."""
    import shlex

    from mlrb.train.interrupt import TrainingInterrupted

    def fit(self):
        raise TrainingInterrupted(1, str(tmp_path / "out" / "phase1" / "checkpoints" / "last.pt"))

    monkeypatch.setattr(DMDTrainer, "fit", fit)
    argv = ["--arch", "dmd", *TINY_CLI, "--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "interrupted after step 1" in err[0] and "phase1/checkpoints/last.pt" in err[0]
    command = shlex.split(err[-1])
    assert command[:4] == ["mlrb", "train", "--arch", "dmd"]
    assert command[-4:] == ["--out", str(tmp_path / "out"), "--resume", "auto"]
