"""The training loop on tiny synthetic data: learning, period logs, exact resume, CLI."""
import json
import math

import pytest
import torch

from mlrb.train.cli import main as train_main
from mlrb.train.timing import main as time_main
from mlrb.train.trainer import TrainConfig, Trainer


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(synthetic_train=32, synthetic_val=4, size=(32, 32), n_d=64, batch_size=4, epochs=2,
                lr=1e-3, out_dir=str(tmp_path / name), progress=False, backend="auto")
    base.update(kw)
    return TrainConfig(**base)


def periods(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet_backend_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*slower 'reference' backend.*")
        yield


def test_training_reduces_the_loss(tmp_path):
    # 8 fixed samples (no augmentation), 2 steps per epoch, all 78 losses with rebalancing.
    cfg = tiny(tmp_path, synthetic_train=8, synthetic_val=2, epochs=20, augment=False,
               eval_before=False)
    summary = Trainer(cfg).fit()
    recs = periods(tmp_path / "run" / "periods.jsonl")
    assert summary["steps"] == 40 and len(recs) == 40  # periods end after steps 0 and 1 of each epoch
    total = [r["total"] for r in recs]
    d0 = [r["losses"][0] for r in recs]
    # Rebalancing keeps the overall loss's size (Eqs. 9, 11), so period totals are comparable.
    assert sum(total[-6:]) / 6 < 0.9 * total[0]
    assert sum(d0[-6:]) / 6 < 0.9 * d0[0]


def test_periods_are_logged_with_weights_and_contributions(tmp_path):
    # 64x64: every scale down to 2x2 (at 32x32 scale 5 is 1x1, where the difference losses are 0)
    tr = Trainer(tiny(tmp_path, epochs=2, size=(64, 64)))
    assert tr.steps_per_epoch == 8 and sorted(tr.period_ends) == [1, 3, 5, 7]
    summary = tr.fit()
    assert summary["steps"] == 16 and summary["periods"] == 8
    recs = periods(tmp_path / "run" / "periods.jsonl")
    assert [r["period"] for r in recs] == list(range(8))
    assert [r["step"] for r in recs[:4]] == [2, 4, 6, 8]
    assert [r["lambda"] for r in recs[::4]] == [3.0, 1.5]
    names = json.load(open(tmp_path / "run" / "run.json"))["names"]
    assert len(names) == 78 and names[0] == "D@0"
    # Before initialization every weight is 1/n; the initialization equalises contributions.
    assert recs[0]["weights_used"] == pytest.approx([1 / 78] * 78)
    init = torch.tensor(recs[0]["weights"]) * torch.tensor(recs[0]["losses"])
    assert torch.allclose(init, init.mean().expand(78), rtol=1e-6)
    for r in recs:
        used, losses = torch.tensor(r["weights_used"]), torch.tensor(r["losses"])
        assert torch.allclose(torch.tensor(r["contributions"]), used * losses)
    for key in ("losses", "weights", "contributions"):
        rows = (tmp_path / "run" / f"{key}.csv").read_text().splitlines()
        assert len(rows) == 9 and rows[0].split(",")[:4] == ["period", "epoch", "step", "D@0"]
    metrics = periods(tmp_path / "run" / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert set(summary["metrics_after"]) >= {"d1", "abs_rel", "rmse"}
    assert (tmp_path / "run" / "checkpoints" / "epoch002.pt").exists()


def test_resume_reproduces_the_next_steps_exactly(tmp_path):
    # Straight run: 11 steps (crosses the epoch boundary at step 8 and its evaluation).
    straight = Trainer(tiny(tmp_path, "straight", max_steps=11))
    straight.fit()
    # Interrupted run: 5 steps (mid-period: periods end after steps 2, 4, 6, 8), then resume.
    first = Trainer(tiny(tmp_path, "resumed", max_steps=5))
    first.fit()
    del first
    resumed = Trainer(tiny(tmp_path, "resumed", max_steps=11, resume="auto"))
    assert resumed.global_step == 5 and resumed.step_in_epoch == 5
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    wa, wb = straight.weighter.state_dict(), resumed.weighter.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    pa = periods(tmp_path / "straight" / "periods.jsonl")
    pb = periods(tmp_path / "resumed" / "periods.jsonl")
    assert len(pa) == len(pb) == 5
    assert [r["losses"] for r in pa] == [r["losses"] for r in pb]
    assert [r["weights"] for r in pa] == [r["weights"] for r in pb]
    for key in ("losses", "weights", "contributions"):  # the logs the resume rewrote, byte for byte
        assert (tmp_path / "straight" / f"{key}.csv").read_bytes() == (tmp_path / "resumed" / f"{key}.csv").read_bytes()


def test_resume_refuses_other_settings_and_reused_folders(tmp_path):
    Trainer(tiny(tmp_path, max_steps=2)).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny(tmp_path))
    with pytest.raises(ValueError, match="settings differ.*select"):
        Trainer(tiny(tmp_path, select="L^0", resume="auto"))
    with pytest.raises(ValueError, match="nope.pt: checkpoint not found"):
        Trainer(tiny(tmp_path, "other", resume=str(tmp_path / "nope.pt")))


def test_uncertainty_weighting_learns_its_parameters(tmp_path):
    tr = Trainer(tiny(tmp_path, weighting="uncertainty", select="L_D|L_G", max_steps=3, eval_before=False))
    before = tr.weighter.log_var.detach().clone()
    tr.fit()
    assert not torch.equal(before, tr.weighter.log_var.detach())
    assert len(tr.names) == 6 + 30


def test_amlr_pair_uses_a_positive_head(tmp_path):
    tr = Trainer(tiny(tmp_path, weighting="amlr", select="AMLR", max_steps=3, eval_before=False))
    assert tr.model.head == "softplus" and tr.names == ("Si", "Gr")
    tr.fit()
    recs = periods(tmp_path / "run" / "periods.jsonl")
    assert all(math.isfinite(v) for r in recs for v in r["losses"] + r["weights"])


def test_period_logs_are_means_over_samples_with_uneven_batches(tmp_path):
    # A smaller last batch (as the paper's DataLoader keeps) counts by its samples, in the
    # period log and in the weighter alike; the default rebalancing caps the weight ratio.
    tr = Trainer(tiny(tmp_path, select="D@0,M@0,r@0,c@0", eval_before=False))
    assert tr.weighter.max_ratio == TrainConfig().max_ratio == 1e6
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 4, generator=g, dtype=torch.float64) + 0.1,
               torch.rand(1, 4, generator=g, dtype=torch.float64) + 5.0]
    tr.compute_losses = lambda batch: batch["losses"].clone().requires_grad_()
    for x in batches:
        tr.train_step({"losses": x})
    rec = tr.end_period()
    samples = torch.cat(batches)
    assert rec["losses"] == pytest.approx(samples.mean(0).tolist(), rel=1e-12)
    assert rec["total"] == pytest.approx(samples.sum(1).mean().item() / 4, rel=1e-12)  # weights 1/4 before init
    torch.testing.assert_close(tr.weighter.last_mean, samples.mean(0), rtol=1e-12, atol=0)


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="weighting"):
        Trainer(TrainConfig(weighting="magic"))
    with pytest.raises(ValueError, match="unknown loss"):
        Trainer(TrainConfig(select="D@9", synthetic_train=8, synthetic_val=2))
    with pytest.raises(ValueError, match="lambda schedule: start"):  # at the start, not at the first rebalancing
        Trainer(tiny(tmp_path, synthetic_train=8, synthetic_val=2, lambda_start=math.nan))


def test_cli_trains_and_prints_the_comparison(tmp_path, capsys):
    rc = train_main(["--synthetic-train", "16", "--synthetic-val", "4", "--size", "64", "64", "--n-d", "32",
                     "--batch-size", "4", "--epochs", "1", "--select", "{D0,M0,r0,c0}", "--weighting", "fixed",
                     "--out", str(tmp_path / "cli"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "untrained" in out and "trained" in out and "abs_rel" in out
    info = json.load(open(tmp_path / "cli" / "run.json"))
    assert info["names"] == ["D@0", "M@0", "r@0", "c@0"]
    assert train_main(["--list-sets"]) == 0
    with pytest.raises(SystemExit):
        train_main(["--select", "nonsense@7"])


def test_cli_reports_missing_data_clearly(tmp_path, capsys):
    rc = train_main(["--train-list", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_time_prints_table7(capsys):
    rc = time_main(["--size", "32", "32", "--n-d", "32", "--batch-size", "2", "--iters", "1", "--warmup", "0",
                    "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1.63" in out and "1.70" in out and "1.97" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("{D0}", "L^3", "all"))]
    assert [r[1] for r in rows] == ["1", "39", "78"]
    assert all(float(r[2]) > 0 for r in rows)
