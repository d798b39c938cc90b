"""mlrb report on a hand-made run folder: Table S-1 arithmetic, figures, clear errors."""
import json

import numpy as np
import pytest

from mlrb.names import LOSS_NAMES
from mlrb.train import report
from mlrb.train.report import ReportError, correlation, difficulty, load_run, make_report, pca_2d


def _write_run(path, T=12, n=78, seed=0):
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.05, 5.0, n)
    rate = rng.uniform(0.01, 0.3, n)
    path.mkdir()
    names = list(LOSS_NAMES[:n])
    (path / "run.json").write_text(json.dumps({"names": names}))
    w = np.full(n, 1 / n)
    with open(path / "periods.jsonl", "w") as fh:
        for t in range(T):
            losses = start * np.exp(-rate * t) * (1 + 0.01 * rng.standard_normal(n))
            used = w.copy()
            if t == 0:
                w = (used * losses).sum() / n / losses  # equal contributions, as Eq. 9
            fh.write(json.dumps({"period": t, "epoch": t // 4, "step": 2 * (t + 1), "lambda": 3.0 - 1.5 * (t // 4),
                                 "total": float((used * losses).sum()), "losses": losses.tolist(),
                                 "weights_used": used.tolist(), "weights": w.tolist(),
                                 "contributions": (used * losses).tolist()}) + "\n")
    return names


def test_difficulty_is_eq_s1_scaled_to_d0(tmp_path):
    names = _write_run(tmp_path / "run")
    run = load_run(str(tmp_path / "run"))
    table = difficulty(run)
    L, w0 = run["losses"], run["weights"][0]
    red = -w0 * (L[-1] - L[0])
    assert table["D@0"] == pytest.approx(1.0)
    for i in (5, 40, 77):
        assert table[names[i]] == pytest.approx(red[i] / red[0])


def test_pca_and_correlation_shapes():
    rng = np.random.default_rng(1)
    base = np.exp(-0.2 * np.arange(10))[:, None]
    losses = base * rng.uniform(1, 2, 5) + 0.001 * rng.standard_normal((10, 5))
    losses[:, 4] = rng.uniform(size=10)  # one loss that does not follow the others
    c = correlation(losses)
    assert c.shape == (5, 5) and np.allclose(np.diag(c), 1) and np.allclose(c, c.T)
    assert c[0, 1] > 0.99 and abs(c[0, 4]) < 0.9
    coords, frac = pca_2d(losses)
    assert coords.shape == (5, 2) and 0.5 < frac[0] <= 1 and frac.sum() <= 1 + 1e-9
    # losses that move together land together
    assert np.linalg.norm(coords[0] - coords[1]) < np.linalg.norm(coords[0] - coords[4])
    with pytest.raises(ReportError, match="3 periods"):
        pca_2d(losses[:2])


def test_report_writes_figures_and_tables(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "run")
    assert report.main([str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "report"
    for name in ("contributions.png", "pca.png", "correlation.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "difficulty.md").read_text()
    assert "| D | **1.000**" in md
    assert len((out / "difficulty.csv").read_text().splitlines()) == 79
    assert "Table S-1" in capsys.readouterr().out


def test_report_errors(tmp_path, capsys, monkeypatch):
    assert report.main([str(tmp_path)]) == 2
    assert "periods.jsonl" in capsys.readouterr().err
    _write_run(tmp_path / "run")

    def no_matplotlib():
        raise ReportError("the figures need matplotlib, which is not installed")

    monkeypatch.setattr(report, "_require_matplotlib", no_matplotlib)
    with pytest.raises(ReportError, match="matplotlib"):
        make_report(str(tmp_path / "run"))
    # the tables do not need matplotlib and are written first
    assert (tmp_path / "run" / "report" / "difficulty.csv").exists()


def test_difficulty_keeps_its_signs_when_d0_grew(tmp_path, monkeypatch):
    _write_run(tmp_path / "run", T=4, n=13)
    lines = (tmp_path / "run" / "periods.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    last = recs[-1]
    last["losses"][0] = 2 * recs[0]["losses"][0] + 1.0  # D@0 grew over the run; the others fell
    (tmp_path / "run" / "periods.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    run = load_run(str(tmp_path / "run"))
    L, w0 = run["losses"], run["weights"][0]
    red = -w0 * (L[-1] - L[0])
    table = difficulty(run)
    assert table["D@0"] == pytest.approx(-1.0)
    for i, name in enumerate(run["names"]):
        assert np.sign(table[name]) == np.sign(red[i])  # reduced stays positive, grew negative
        assert table[name] == pytest.approx(red[i] / abs(red[0]))
    def no_figures():  # the tables are written before the figures: skip drawing them here
        raise ReportError("no figures in this test")

    monkeypatch.setattr(report, "_require_matplotlib", no_figures)
    with pytest.raises(ReportError, match="no figures"):
        make_report(str(tmp_path / "run"))
    assert "D@0 grew" in (tmp_path / "run" / "report" / "difficulty.md").read_text()
    # D@0 unchanged: scaled by the largest change instead of failing
    last["losses"][0] = recs[0]["losses"][0]
    run["losses"][-1, 0] = run["losses"][0, 0]
    table = difficulty(run)
    assert max(abs(v) for v in table.values()) == pytest.approx(1.0) and table["D@0"] == 0


def test_too_short_runs_say_what_was_skipped(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for T, written, skipped in ((1, [], ["Table S-1", "Fig. 2", "Fig. S-2"]), (2, ["difficulty.md"], ["Fig. 2"])):
        _write_run(tmp_path / f"run{T}", T=T, n=13)
        assert report.main([str(tmp_path / f"run{T}")]) == 0
        out = capsys.readouterr().out
        assert (tmp_path / f"run{T}" / "report" / "contributions.png").exists()
        assert not (tmp_path / f"run{T}" / "report" / "pca.png").exists()
        for w in written:
            assert (tmp_path / f"run{T}" / "report" / w).exists()
        lines = [ln for ln in out.splitlines() if ln.startswith("skipped:")]
        for what in skipped:
            assert any(what in ln and f"the run has {T}" in ln for ln in lines), out


def test_broken_logs_are_named(tmp_path):
    _write_run(tmp_path / "run", T=3, n=13)
    path = tmp_path / "run" / "periods.jsonl"
    good = path.read_text()
    path.write_text(good + '{"period": 3, "losses": [0.1')  # a line cut short by a kill: ignored
    assert load_run(str(tmp_path / "run"))["losses"].shape == (3, 13)
    path.write_text(good + '{"period": 3, "epoch": 0, "losses": [1], "weights_used": [1], "weights": [1], '
                           '"contributions": [1]}\n')
    with pytest.raises(ReportError, match=r"periods.jsonl:4: expected 13 values"):
        load_run(str(tmp_path / "run"))
    path.write_text(good)
    (tmp_path / "run" / "run.json").write_text("{")
    with pytest.raises(ReportError, match="run.json: not JSON"):
        load_run(str(tmp_path / "run"))


def test_diverged_losses_are_left_out_of_the_trajectory_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "run", T=4, n=13)
    path = tmp_path / "run" / "periods.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[2]["losses"][5] = float("nan")  # json writes NaN, as mlrb train does for a NaN mean
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    written = make_report(str(tmp_path / "run"))
    assert "pca" in written and "correlation" in written
    assert any(LOSS_NAMES[5] in why and "not finite" in why for why in written.skipped.values())
