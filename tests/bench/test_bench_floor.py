"""mlrb bench floor: the machine peaks (mlrb._C.machine_peaks), the floor model's counts
(mlrb.bench.floor) and the command, end to end on a tiny shape.

The counts are checked against hand counts of the kernels' simplest stages and against
how they must scale with the pixel counts; the floors use fixed peaks, so nothing but the
end-to-end run and the peaks themselves depends on the machine's speed.
"""
from __future__ import annotations

import json
import math
import re

import pytest

from mlrb import cli
from mlrb.bench import floor
from mlrb.names import resolve_select

_C = pytest.importorskip("mlrb._C")

PEAK_NAMES = {"add", "mul", "add_mul", "sqrt", "div", "load", "store", "dram"}
# Fixed peaks (elements per ns) for the model-only tests.
PEAKS = {"add": 50.0, "mul": 50.0, "add_mul": 100.0, "sqrt": 5.0, "div": 7.0, "load": 50.0, "store": 25.0,
         "dram": 5.0}


def geometry(shape: str, select="all", dtype="float32") -> floor.Geometry:
    from mlrb.bench.cases import parse_shape

    return floor.geometry(parse_shape(shape), resolve_select(select), dtype)


def totals(g: floor.Geometry, pass_: str) -> dict:
    return {sc.stage.name: sc.ops for sc in floor.count(g, pass_)}


# ---------------------------------------------------------------------------- peaks

def peak_relations_broken(peaks: dict) -> list:
    """The relations between peaks that any x86 or ARM core satisfies; what they break."""
    broken = []
    for dt, p in peaks.items():
        # the FP pipes together are at least as fast as either alone; L1 beats DRAM
        if not p["add_mul"] > 0.9 * max(p["add"], p["mul"]):
            broken.append((dt, "add_mul"))
        if not p["load"] > p["dram"]:
            broken.append((dt, "load > dram"))
    # a vector holds half as many float64 as float32: the element rates halve
    for name in ("add", "load"):
        if not peaks["float64"][name] < 0.8 * peaks["float32"][name]:
            broken.append(("float64 vs float32", name))
    return broken


@pytest.fixture(scope="module")
def peaks():
    """Both dtypes' peaks, measured in alternation up to four times, each entry the best so
    far: a busy spell of a shared CI core (one once halved the float32 load rate of a 0.05 s
    measurement) spoils a measurement, not four."""
    best: dict = {}
    for _ in range(4):
        for dt in ("float32", "float64"):
            p = _C.machine_peaks(dt, 0.05)
            assert set(p) == PEAK_NAMES, dt
            assert all(math.isfinite(v) and v > 0 for v in p.values()), (dt, p)
            best[dt] = {k: max(v, best.get(dt, {}).get(k, 0.0)) for k, v in p.items()}
        if not peak_relations_broken(best):
            break
    return best


def test_machine_peaks_are_positive_and_finite_for_both_dtypes(peaks):
    for dt, p in peaks.items():
        assert set(p) == PEAK_NAMES, dt
        assert all(math.isfinite(v) and v > 0 for v in p.values()), (dt, p)
    assert not peak_relations_broken(peaks), peaks


@pytest.mark.parametrize("args, fragment", [
    (("float16",), "dtype"),
    (("",), "dtype"),
    (("float32", 0.0), "seconds"),
    (("float32", -1.0), "seconds"),
    (("float32", math.nan), "seconds"),
    (("float32", math.inf), "seconds"),
    (("float32", 1e6), "seconds"),
])
def test_machine_peaks_rejects_bad_arguments(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        _C.machine_peaks(*args)


def test_machine_peaks_rejects_wrong_types():
    with pytest.raises(TypeError):
        _C.machine_peaks(32)
    with pytest.raises(TypeError):
        _C.machine_peaks("float32", "long")


# ---------------------------------------------------------------------------- counts

def test_counts_of_the_simplest_case_match_the_code():
    # D@0 alone: the row window loads each row of p, g (2 loads), stores p, g, e (3 stores),
    # one sub; the D sums read e, add |e| (abs + add). Nothing else runs in the forward.
    g = geometry("2x1x16x24", "D@0")
    n = 2 * 16 * 24
    fwd = totals(g, "fwd")
    assert set(fwd) == {"row window: rows of p, g, e (padded)", "D: |e| sums"}
    assert sum(fwd.values(), floor.Ops()) == floor.Ops(add=3 * n, load=3 * n, store=3 * n)
    # the backward also zeroes the gradient and accumulates sgn(e) into t0 (field clear,
    # out += t0): sgn is a compare, and, or, and (4), plus the add into t0; its row window
    # stores only e (p and g are read in place)
    bwd = totals(g, "bwd")
    assert bwd["zero the gradient"] == floor.Ops(store=n)
    assert bwd["D: sgn(e) into t0"] == floor.Ops(add=5 * n, mul=n, load=2 * n, store=n)
    assert bwd["row window: row of e (padded; p, g in place)"] == floor.Ops(add=n, load=2 * n, store=n)
    assert "pyramid: column taps (4 rows of pred, gt)" not in bwd


def test_the_backward_reads_the_levels_its_forward_kept():
    # cpu/kept_levels.h: the backward reads the levels D^k of pred and gt that its forward
    # built (charged to DRAM once) instead of rebuilding them; it still builds the mask levels
    g = geometry("2x1x64x96", "L^0 | L^2")
    fwd, bwd = floor.count(g, "fwd"), floor.count(g, "bwd")
    assert "pyramid: column taps (4 rows of pred, gt)" == fwd[0].stage.name  # the first to read the inputs
    assert not {sc.stage.name for sc in bwd if sc.stage.name.startswith("pyramid:")} - {
        "pyramid: zero the level gradient"}
    levels, n_full = 2 * 2 * 16 * 24, 2 * 64 * 96  # two samples, pred and gt, level 2 is 16 x 24
    assert fwd[0].dram_bytes == 4 * 2 * n_full  # float32 pred and gt, once
    assert bwd[0].stage.name == "zero the gradient" and bwd[0].dram_bytes == 4 * (2 * n_full + levels)
    inputs = [sc for sc in bwd if sc.dram_bytes and sc is not bwd[0]]
    assert [sc.dram_bytes for sc in inputs] == [4 * 2 * n_full]  # pred and gt once, at scale 0
    masked = {sc.stage.name for sc in floor.count(geometry("2x1x64x96@0.5", "L^2"), "bwd")}
    assert "pyramid: mask levels, column taps (4 mask rows, and)" in masked


def test_counts_scale_exactly_with_the_pixel_counts():
    base, wide, batch = geometry("4x1x64x96"), geometry("4x1x64x192"), geometry("8x1x64x96")
    for pass_ in ("fwd", "bwd"):
        b, w, bb = (floor.count(g, pass_) for g in (base, wide, batch))
        assert [s.stage.name for s in b] == [s.stage.name for s in w] == [s.stage.name for s in bb]
        for sb, sw, sbb in zip(b, w, bb):
            assert sbb.ops == sb.ops * 2, sb.stage.name  # twice the samples: twice everything
            per_row = sb.stage.over in ("box_pad", "boxT_pad")
            if per_row:  # padding is per row: W does not change it
                assert sw.ops == sb.ops, sb.stage.name
            elif sb.stage.over == "boxT_fold":  # per row, r + 1 entries each side (fewer on narrow levels)
                assert sb.ops.load < sw.ops.load < 1.2 * sb.ops.load, sb.stage.name
            elif sb.stage.over == "boxT_inner":  # w - 2 entries per row (w - 1 for r >= 8)
                assert 2 * sb.ops.load < sw.ops.load < 2.1 * sb.ops.load, sb.stage.name
            elif sb.stage.over in ("box_doubling", "boxT_doubling"):  # padded rows: w + pad
                assert sb.ops.load < sw.ops.load < 2 * sb.ops.load, sb.stage.name
            else:
                assert sw.ops == sb.ops * 2, sb.stage.name  # W 96 -> 192: every level's width doubles
        # the full-resolution stages (and the pyramid's column pass) scale with W exactly
        full = [s for s in b if s.stage.over in ("full", "level_rows_x_W")]
        assert full


def test_levels_without_valid_pixels_are_not_counted():
    # drivers.h mark_live_levels: a level k >= 1 whose mask has no valid pixel is skipped,
    # per sample; the mask levels themselves are built for every sample
    import torch

    from mlrb.bench.cases import parse_shape

    mask = torch.zeros(2, 1, 64, 96, dtype=torch.bool)
    mask[0] = True  # sample 0: every level live
    mask[1, :, :, :2] = True  # sample 1: two valid columns; every level k >= 1 dead (4x4 footprints),
    shape = parse_shape("2x1x64x96@0.05")  # every row of scale 0 with gradient and normal terms
    g = floor.geometry(shape, resolve_select("all"), "float32", mask)
    every = floor.geometry(shape, resolve_select("all"), "float32")  # no mask given: all counted
    assert g.live == (2, 1, 1, 1, 1, 1) and every.live is None
    for pass_ in ("fwd", "bwd"):
        for sg, se in zip(floor.count(g, pass_), floor.count(every, pass_)):
            assert sg.stage.name == se.stage.name
            for k, ops in se.by_scale.items():
                if sg.stage.name == "zero the gradient at invalid pixels (mask)":  # sample 1's band zeroes them
                    assert sg.by_scale[k] == ops * 0.5 and g.band_zeroes == 1
                elif k in (None, 0) or sg.stage.over.startswith("mask_level"):
                    assert sg.by_scale[k] == ops, (sg.stage.name, k)
                else:  # one of the two samples
                    assert sg.by_scale[k] == ops * 0.5, (sg.stage.name, k)
        names = [sc.stage.name for sc in floor.count(g, pass_)]
        assert "pyramid: mask levels, column taps (4 mask rows, and)" in names
    assert "pyramid: mask levels, column taps (4 mask rows, and)" not in totals(geometry("2x1x64x96"), "fwd")


def test_samples_whose_band_zeroes_invalid_pixels_skip_that_pass():
    # drivers.h band_zeroes: with whole samples (B >= 4) and a box loss at scale 0, a sample
    # without a live selected level k >= 1 gets its invalid pixels zeroed by its scale-0 band
    import torch

    from mlrb.bench.cases import parse_shape

    mask = torch.zeros(4, 1, 64, 96, dtype=torch.bool)
    mask[0] = True  # sample 0: every level live
    mask[1:, :, :, :2] = True  # samples 1-3: two valid columns, every level k >= 1 dead
    name, n = "zero the gradient at invalid pixels (mask)", 64 * 96

    def pass_elements(shape, select, m=mask):
        g = floor.geometry(parse_shape(shape), resolve_select(select), "float32", m)
        return g, next((sc.elements for sc in floor.count(g, "bwd") if sc.stage.name == name), 0)

    g, elements = pass_elements("4x1x64x96@0.05", "all")
    assert (g.no_live_levels, g.band_zeroes, elements) == (3, 3, n)
    assert pass_elements("4x1x64x96@0.05", "M5@0, D@1")[1] == n  # level 1 live in sample 0 only
    assert pass_elements("4x1x64x96@0.05", "D@0, M@0, r@0, N@0, L^1")[1] == 4 * n  # no box at scale 0
    assert pass_elements("4x1x64x96@0.05", "all", torch.ones_like(mask))[1] == 4 * n  # every level live
    tall = torch.zeros(2, 1, 200, 96, dtype=torch.bool)  # a batch of 2 at 200 rows: 2 bands per sample
    tall[:, :, :, :2] = True
    g, elements = pass_elements("2x1x200x96@0.05", "all", tall)
    assert not g.whole_samples and g.no_live_levels == 2 and elements == 2 * 200 * 96  # bands: never
    assert pass_elements("4x1x64x96@0.05", "all", None)[1] == 4 * n  # no mask given: every level live


def test_rows_without_valid_footprints_are_not_counted():
    # row_window.h RowWindow::row_types: with a mask, a row where no footprint of the gradient
    # (normal) group can be valid skips the group; such rows clear the five fields instead
    import torch

    from mlrb.bench.cases import parse_shape

    shape, sel = parse_shape("1x1x16x24@0.5"), resolve_select("L^0")
    mask = torch.zeros(1, 1, 16, 24, dtype=torch.bool)
    mask[0, 0, 4, 5:7] = True  # row 4: r (a horizontal pair); no vertical pair, no normal footprint
    mask[0, 0, 9:11, 2:4] = True  # rows 9, 10: gradient terms; row 9 also normal terms
    g = floor.geometry(shape, sel, "float32", mask)
    assert g.group_rows["grad"][0] == 3 and g.group_rows["normal"][0] == 1
    full = floor.geometry(shape, sel, "float32", torch.ones_like(mask))
    assert full.group_rows["grad"][0] == full.group_rows["normal"][0] == 16
    a, b = totals(g, "bwd"), totals(full, "bwd")
    assert a["normal_loss_grad formula"] == b["normal_loss_grad formula"] * (1 / 16)
    assert a["gradient types: sgn(stencil(e)) into the fields (one loop)"] == \
        b["gradient types: sgn(stencil(e)) into the fields (one loop)"] * (3 / 16)
    # the band's rows (16, none below it) less the 3 where the whole gradient group assigns
    assert a["fields: clear the active fields"] == floor.Ops(store=5 * (16 - 3) * 24)
    assert "fields: clear the active fields" not in b
    assert totals(g, "fwd")["row test: valid footprints of the groups (mask)"] == floor.Ops(add=3, mul=3, load=3) * 384


def test_the_band_partition_of_a_small_batch_is_modelled():
    one, four = geometry("1x1x288x384"), geometry("4x1x288x384")
    assert not one.whole_samples and four.whole_samples
    halo = [sum(s.elements for s in floor.count(g, "bwd") if s.stage.over == "halo") for g in (one, four)]
    assert halo[0] > 0 and halo[1] == 0
    # bands recompute the box rows of their halos: more box work per sample than whole samples
    rows = [sum(s.elements for s in floor.count(g, "fwd") if s.stage.over == "box_rows") / g.B
            for g in (one, four)]
    assert rows[0] > rows[1]


def test_one_loss_type_has_a_smaller_floor_than_all_78():
    all78 = floor.floor_model(geometry("8x1x288x384"), PEAKS)
    for select in ("D@0", "N@0", "L_G", "M65@3"):
        one = floor.floor_model(geometry("8x1x288x384", select), PEAKS)
        for p in ("fwd", "bwd"):
            assert 0 < one[p]["floor_ms"] < all78[p]["floor_ms"], (select, p)
    # and the passes add up their stages
    assert all78["bwd"]["floor_ms"] == pytest.approx(sum(s["floor_ms"] for s in all78["bwd"]["stages"]))


def test_the_masked_variant_is_not_cheaper():
    for st in floor.STAGES:  # per element, the masked work takes at least as long at any peaks
        plain, masked = st.work(False), st.work(True)
        if plain is not None:
            assert masked is not None, st.name
            for peaks in (PEAKS, {**PEAKS, "div": 0.5, "sqrt": 0.5}, {**PEAKS, "load": 5.0, "store": 5.0}):
                t = [max(floor.stage_times_ns(o, 0.0, peaks, 4).values()) for o in (plain, masked)]
                assert t[1] >= t[0], (st.name, peaks)
    for select in ("all", "D@0", "L_N"):
        plain = floor.floor_model(geometry("2x1x96x128", select), PEAKS)
        masked = floor.floor_model(geometry("2x1x96x128@0.5", select), PEAKS)
        for p in ("fwd", "bwd"):
            assert masked[p]["floor_ms"] > plain[p]["floor_ms"], (select, p)


def test_the_model_rejects_the_amlr_pair():
    with pytest.raises(ValueError, match="Si"):
        floor.types_per_scale(resolve_select("D@0, Si"))


def test_stage_table_names_its_sources_and_pixel_sets():
    names = [s.name for s in floor.STAGES]
    assert len(names) == len(set(names))
    for s in floor.STAGES:
        assert s.over in floor.PIXEL_SETS and s.source and s.passes in ("fwd", "bwd", "fwd+bwd"), s.name
    assert any("box_row_sum_transpose" in s.source for s in floor.STAGES)
    assert any(s.source == "loss_math.h:normal_loss" for s in floor.STAGES)
    assert any(s.source == "loss_math.h:normal_loss_grad" for s in floor.STAGES)


# ---------------------------------------------------------------------------- command

def test_command_runs_end_to_end(capsys, tmp_path):
    out = tmp_path / "floor.json"
    argv = ["bench", "floor", "--shape", "2x1x24x32", "--repeat", "1", "--rounds", "2", "--peak-seconds", "0.1",
            "--select", "L^0 | L^1", "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    fractions = {}
    for p in ("forward", "backward"):
        m = re.search(rf"^\s+{p}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+[0-9.e+-]+ \([0-9.]+-[0-9.]+\)$", text, re.M)
        assert m, text
        fractions[p] = float(m.group(3))
        assert 0 < fractions[p] < 1.5, text
    assert "peaks (elements/ns" in text and "stages by floor" in text
    r = json.loads(out.read_text())
    assert r["n_losses"] == 26 and set(r["passes"]) == {"fwd", "bwd"} and set(r["peaks"]) == PEAK_NAMES
    assert r["passes"]["fwd"]["fraction"] == pytest.approx(fractions["forward"], abs=1e-3)
    # two rounds between three peak measurements; each result is the best of the run
    assert r["rounds"] == 2 and len(r["peak_chunks"]) == 3
    for k, v in r["peaks"].items():
        assert v == max(c[k] for c in r["peak_chunks"]), k
    for p in ("fwd", "bwd"):
        m = r["passes"][p]
        assert len(m["rounds_ms"]) == 2 and m["measured_ms"] == min(m["rounds_ms"]), m


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"repeat": 0}, {"rounds": 1.5}])
def test_run_refuses_no_rounds_or_calls(kwargs):
    with pytest.raises(ValueError, match="rounds and repeat"):
        floor.run("2x1x24x32", "L^0", **kwargs)


@pytest.mark.parametrize("argv, fragment", [
    (["--repeat", "0"], "--repeat"),
    (["--repeat", "x"], "--repeat"),
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "101"], "--rounds"),
    (["--shape", "1x1x0x4"], "--shape"),
    (["--shape", "huge"], "--shape"),
    (["--select", "nonsense"], "--select"),
    (["--select", "Si"], "--select"),
    (["--dtype", "float16"], "--dtype"),
    (["--peak-seconds", "0"], "--peak-seconds"),
    (["--top", "-1"], "--top"),
    (["--json", "/nonexistent-mlrb-dir/floor.json"], "--json"),
])
def test_bad_arguments_are_one_line_naming_the_argument(argv, fragment, capsys):
    try:
        rc = cli.main(["bench", "floor", *argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and lines[0].startswith("mlrb bench floor: error: "), err
    assert fragment in lines[0], lines[0]
