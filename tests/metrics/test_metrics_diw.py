"""WHDR on DIW's annotation CSV and the WKDR prediction-threshold sweep."""
import json

import numpy as np
import pytest
import torch

from mlrb.cli import main as mlrb_main
from mlrb.metrics import (DIWFormatError, read_diw_csv, whdr_diw, wkdr, wkdr_sweep)

CSV = """./DIW_test/0001.thumb
1,1,4,6,>,6,4
DIW_test/0002.thumb
2,3,2,4,<,6,4
./DIW_test/0003.thumb
4,6,1,1,<,12,8
"""


def preds():
    d = np.arange(24, dtype=np.float64).reshape(4, 6) + 1  # depth grows along rows and columns
    return {"./DIW_test/0001.thumb": d, "DIW_test/0002.thumb": d,
            # 0003 is annotated at 12x8: (y=4, x=6) -> pixel (1, 2), (1, 1) -> (0, 0) of this 4x6 map
            "./DIW_test/0003.thumb": d}


def test_read_and_score(tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    pairs = read_diw_csv(tmp_path / "a.csv")
    assert [p.relation for p in pairs] == [1, -1, -1] and pairs[2].width == 12 and pairs[0].xB == 6
    # 0001: A=(0,0) depth 1 vs B=(3,5) depth 24: predicted '<', annotated '>' -> wrong
    # 0002: A=(1,2)=9 vs B=(1,3)=10: '<' right;  0003: A=(1,2)=9 vs B=(0,0)=1: '>' vs '<' -> wrong
    assert whdr_diw(pairs, preds()) == pytest.approx(2 / 3)
    assert whdr_diw(pairs, {k: 1.0 / v for k, v in preds().items()}, disparity=True) == pytest.approx(2 / 3)
    assert whdr_diw(pairs, {k: -v + 30 for k, v in preds().items()}) == pytest.approx(1 / 3)
    # a threshold makes 9 vs 10 "equal", which DIW counts as a disagreement
    assert whdr_diw(pairs, preds(), threshold=0.2) == pytest.approx(1.0)


@pytest.mark.parametrize("text, msg", [
    ("a.png\n1,1,2,2,>,4\n", ":2: expected 7 fields"),
    ("a.png\n1,1,2,2,=,4,4\n", ":2: relation must be"),
    ("a.png\n1,x,2,2,>,4,4\n", ":2: non-numeric"),
    ("a.png\n1,1,2,9,>,4,4\n", ":2: a point lies outside"),
    ("a.png\n-1,1,2,2,>,4,4\n", ":2: a point lies outside"),
    ("a.png\n1,1,2,2,>,inf,4\n", ":2: .*finite"),  # was an OverflowError traceback
    ("a.png\n1,1,2,2,>,4,1e400\n", ":2: .*finite"),
    ("a.png\nnan,1,2,2,>,4,4\n", ":2: .*finite"),
    ("a.png\n1,1.5,2,2,>,4,4\n", ":2: .*whole pixels"),
    ("a.png\n1,1,2,2,>,4.5,4\n", ":2: .*whole pixels"),  # was silently read as 4
    ("a.png\n1,1,2,2,>,4,4\nb.png\n", ":3: image path without"),
    ("", "no annotations"),
])
def test_malformed_lines(tmp_path, text, msg):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DIWFormatError, match=msg):
        read_diw_csv(tmp_path / "bad.csv")


def test_cli_folder_and_sweep(tmp_path, capsys):
    (tmp_path / "a.csv").write_text(CSV)
    folder = tmp_path / "pred" / "DIW_test"
    folder.mkdir(parents=True)
    for k, v in preds().items():
        np.save(folder / (k.split("/")[-1].replace(".thumb", "") + ".npy"), v)
    out = tmp_path / "r.json"
    assert mlrb_main(["diw", "--csv", str(tmp_path / "a.csv"), "--pred", str(tmp_path / "pred"), "--sweep",
                      "0", "0.2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pairs"] == 3 and res["whdr"] == pytest.approx(2 / 3)
    assert res["sweep"]["best"] == pytest.approx(2 / 3) and res["sweep"]["threshold"] == 0
    assert "WHDR 66.67%" in capsys.readouterr().out
    (folder / "0002.npy").unlink()
    assert mlrb_main(["diw", "--csv", str(tmp_path / "a.csv"), "--pred", str(tmp_path / "pred")]) == 2
    assert "no prediction" in capsys.readouterr().err


def test_wkdr_sweep_matches_wkdr_and_picks_the_best():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 16, 20, generator=g) + 0.5
    pred = gt * torch.exp(0.05 * torch.randn(2, 1, 16, 20, generator=g))
    ts = [0.0, 0.01, 0.02, 0.05]
    sweep = wkdr_sweep(pred, gt, thresholds=ts, n_pairs=3000)
    for j, t in enumerate(ts):
        ref = wkdr(pred, gt, n_pairs=3000, pred_threshold=t)
        for key, r in ref.items():
            assert sweep[key]["curve"][j] == pytest.approx(r, abs=1e-12)
    bal = sweep.pop("balanced")
    gap = [abs(a - b) for a, b in zip(sweep["wkdr_eq"]["curve"], sweep["wkdr_neq"]["curve"])]
    assert bal["threshold"] == ts[gap.index(min(gap))]
    for key, s in sweep.items():
        assert s["best"] == min(s["curve"]) and s["threshold"] in ts
    # one threshold: WKDR of an image lies between its WKDR= and WKDR!= (why the paper's numbers
    # need the sweep; for a mean over images it is a mix of per-image mixes, so check one image)
    sweep = wkdr_sweep(pred[:1], gt[:1], thresholds=ts, n_pairs=3000)
    sweep.pop("balanced")
    for j in range(len(ts)):
        lo, hi = sorted((sweep["wkdr_eq"]["curve"][j], sweep["wkdr_neq"]["curve"][j]))
        assert lo - 1e-12 <= sweep["wkdr"]["curve"][j] <= hi + 1e-12
    for bad in (-1.0, float("nan"), float("inf")):  # NaN passed a "< 0" test and scored every pair "equal"
        with pytest.raises(ValueError, match="thresholds must be a non-empty list of finite numbers"):
            wkdr_sweep(pred, gt, thresholds=[0.01, bad])


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mlrb diw: error: ") and all(f in err for f in fragments), err
    return err


def test_cli_bad_csv_line_is_one_line_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    np.save(tmp_path / "p" / "0001.npy", np.ones((48, 64)))
    (tmp_path / "d.csv").write_text("./DIW_test/0001.thumb\n10,50,10,5,>,inf,48\n")
    assert mlrb_main(["diw", "--csv", str(tmp_path / "d.csv"), "--pred", str(tmp_path / "p")]) != 0
    _one_line_error(capsys, f"{tmp_path / 'd.csv'}:2: ")


@pytest.mark.parametrize("extra, fragment", [
    (["--threshold", "nan"], "--threshold"),  # was "WHDR 100.00% at t = nan"
    (["--threshold", "inf"], "--threshold"),
    (["--threshold", "-0.1"], "--threshold"),
    (["--sweep", "0", "nan"], "--sweep"),
    (["--json", "nodir/x.json"], "--json"),  # was found after the scoring
])
def test_cli_bad_options_are_refused_before_reading_anything(tmp_path, capsys, extra, fragment):
    # the CSV does not exist: an option checked up front is reported instead of it
    missing = tmp_path / "missing.csv"
    if extra[0] == "--json":
        extra = ["--json", str(tmp_path / extra[1])]
    assert mlrb_main(["diw", "--csv", str(missing), "--pred", str(tmp_path), *extra]) != 0
    assert str(missing) not in _one_line_error(capsys, fragment)
