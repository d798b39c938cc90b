"""The public contract: names and order, selection, input checks, LossSpace, compat, demo."""
import warnings

import pytest
import torch

import mlrb
from mlrb import loss_space as ls
from mlrb.compat import compute_multi_loss
from mlrb.names import SETS, TRAINER_TO_PAPER, names_of, resolve_select


def pair(B=2, H=20, W=28, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    gt = 1 + torch.rand(B, 1, H, W, generator=g)
    pred = gt + 0.2 * torch.randn(B, 1, H, W, generator=g)
    return pred.to(dtype), gt.to(dtype)


# ---------------------------------------------------------------- names and order
def test_loss_names_in_paper_order():
    assert len(mlrb.LOSS_NAMES) == 78 and len(set(mlrb.LOSS_NAMES)) == 78
    assert mlrb.LOSS_NAMES[:5] == ("D@0", "M@0", "M5@0", "M17@0", "M65@0")
    assert mlrb.LOSS_NAMES[-1] == "Nc@5"
    for k in range(6):
        for t, typ in enumerate(mlrb.LOSS_TYPES):
            assert mlrb.LOSS_NAMES[13 * k + t] == f"{typ}@{k}"


def test_trainer_order():
    names = mlrb.TRAINER_LOSS_NAMES
    assert sorted(names) == sorted(mlrb.LOSS_NAMES)
    assert names[:13] == ("D@0", "r@0", "c@0", "N@0", "rr@0", "rc@0", "cc@0", "Nr@0", "Nc@0",
                          "M@0", "M5@0", "M17@0", "M65@0")
    assert [mlrb.LOSS_NAMES[i] for i in TRAINER_TO_PAPER] == list(names)


@pytest.mark.parametrize("name, size", [
    ("all", 78), ("D0", 1), ("L_D", 6), ("L_M", 24), ("L_G", 30), ("L_N", 18), ("L^3", 13), ("AMLR", 2),
])
def test_named_set_sizes(name, size):
    assert len(resolve_select(name)) == size


def test_table5_sets_have_the_paper_sizes():
    sizes = {"{D0}": 1, "{D0,M0,r0,c0}": 4, "{D0,r0,c0,N0}": 4, "L_D|L_N": 24, "L_D|L_M": 30,
             "L_D|L_G": 36, "L^0": 13, "L^0|L^1|L^2": 39, "L^3|L^4|L^5": 39, "all": 78}
    assert {k: len(resolve_select(v)) for k, v in mlrb.TABLE5_SETS.items()} == sizes


def test_select_order_unions_and_duplicates():
    assert names_of(resolve_select(["rc@5", "D@0"])) == ("rc@5", "D@0")
    assert names_of(resolve_select("L^3 ∪ L^4")) == SETS["L^3"] + SETS["L^4"]
    assert resolve_select("L_D | L^0") == resolve_select(["L_D", "L^0"])
    assert len(resolve_select("L_D | L^0")) == 6 + 12      # D@0 once
    assert names_of(resolve_select("D@0, D@0, Si")) == ("D@0", "Si")


@pytest.mark.parametrize("bad, err", [("M18@0", ValueError), ("", ValueError), ([], ValueError), (3, TypeError), ([1], TypeError)])
def test_select_errors(bad, err):
    for _ in range(2):  # the second time too: a failed selection is not remembered
        with pytest.raises(err):
            resolve_select(bad)


def test_a_repeated_selection_is_parsed_once():
    from mlrb import names as N

    names = list(names_of(resolve_select("all")))
    first = resolve_select(names)
    hits = N._resolve_strings.cache_info().hits
    assert resolve_select(names) == resolve_select(tuple(names)) == first == tuple(range(78))
    assert N._resolve_strings.cache_info().hits == hits + 2
    assert resolve_select(iter(names[:3])) == first[:3]  # any other iterable: parsed each time
    names[0] = "M18@0"  # the list's new contents count, not the list
    with pytest.raises(ValueError, match="M18@0"):
        resolve_select(names)


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="did you mean 'M17@0'"):
        mlrb.fused_loss_space(*pair(), select="M18@0")


# ---------------------------------------------------------------- fused_loss_space
def test_columns_follow_select():
    pred, gt = pair()
    full = mlrb.fused_loss_space(pred, gt, backend="reference")
    part = mlrb.fused_loss_space(pred, gt, select=["Nc@5", "D@0", "M17@2"], backend="reference")
    idx = [mlrb.LOSS_NAMES.index(n) for n in ("Nc@5", "D@0", "M17@2")]
    torch.testing.assert_close(part, full[:, idx])


def test_three_dim_input_is_accepted():
    pred, gt = pair()
    a = mlrb.fused_loss_space(pred, gt, backend="reference")
    b = mlrb.fused_loss_space(pred[:, 0], gt[:, 0], backend="reference")
    assert torch.equal(a, b)


@pytest.mark.parametrize("make, err, match", [
    (lambda p, g: (p, g[:, :, :-1]), ValueError, "shapes differ"),
    (lambda p, g: (p.long(), g), TypeError, "pred must be a floating-point"),
    (lambda p, g: (p, g.int()), TypeError, "gt must be a floating-point"),
    (lambda p, g: (p.expand(2, 3, 20, 28), g.expand(2, 3, 20, 28)), ValueError, r"\(B, 1, H, W\)"),
    (lambda p, g: (p[:0], g[:0]), ValueError, "empty"),
])
def test_bad_inputs_are_named(make, err, match):
    with pytest.raises(err, match=match):
        mlrb.fused_loss_space(*make(*pair()), backend="reference")


def test_bad_masks_are_named():
    pred, gt = pair()
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        mlrb.fused_loss_space(pred, gt, (gt > 0).float(), backend="reference")
    with pytest.raises(ValueError, match="mask shape"):
        mlrb.fused_loss_space(pred, gt, torch.ones(2, 1, 20, 27, dtype=torch.bool), backend="reference")


def test_non_finite_values_at_valid_pixels_raise():
    pred, gt = pair()
    pred[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="pred has 1 NaN/Inf"):
        mlrb.fused_loss_space(pred, gt, backend="reference")
    gt[1, 0, 0, 0] = float("inf")
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 0, 3, 4] = False
    with pytest.raises(ValueError, match="gt has 1 NaN/Inf value\\(s\\) at valid pixels"):
        mlrb.fused_loss_space(pred, gt, mask, backend="reference")
    mask[1, 0, 0, 0] = False
    assert torch.isfinite(mlrb.fused_loss_space(pred, gt, mask, backend="reference")).all()
    assert torch.isnan(mlrb.fused_loss_space(pred, gt, backend="reference", check_finite=False)).any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_check_finite_under_torch_func_and_fake_tensors(backend):
    """grad/vjp read the values under their wrappers; vmap counts per instance (in_dims 0
    or 1, nested, under grad, a mask batched or not); fake tensors have no values (skipped,
    the real call checks)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    pred, gt = pair(dtype=torch.float64)
    bad = pred.clone()
    bad[1, 0, 2, 3] = float("nan")
    grad = torch.func.grad(lambda x: mlrb.fused_loss_space(x, gt, backend=backend).sum())
    assert torch.isfinite(grad(pred)).all()
    with pytest.raises(ValueError, match="pred has 1 NaN/Inf"):
        grad(bad)
    vmap, fused = torch.func.vmap, mlrb.fused_loss_space
    per_instance = vmap(lambda x, y: fused(x, y, backend=backend))  # the batch as 2 instances of 1 sample
    assert torch.equal(per_instance(pred[:, None], gt[:, None]), fused(pred, gt, backend=backend)[:, None])
    with pytest.raises(ValueError, match="pred has 1 NaN/Inf"):
        per_instance(bad[:, None], gt[:, None])
    with pytest.raises(ValueError, match="gt has 2 NaN/Inf"):  # one instance each, in_dims 1, gt unbatched
        vmap(lambda x: fused(pred, x, backend=backend), in_dims=1)(torch.stack([bad, bad], 1))
    with pytest.raises(ValueError, match="pred has 4 NaN/Inf"):  # nested: 2 x 2 instances
        vmap(vmap(lambda x: fused(x, gt, backend=backend)))(bad.expand(2, 2, *bad.shape))
    with pytest.raises(ValueError, match="pred has 2 NaN/Inf"):  # per-sample gradients
        vmap(torch.func.grad(lambda x: fused(x, gt, backend=backend).sum()))(bad.expand(2, *bad.shape))
    mask = torch.ones(2, *bad.shape, dtype=torch.bool)
    mask[0, 1, 0, 2, 3] = False  # the NaN is invalid in instance 0 only
    with pytest.raises(ValueError, match="pred has 1 NaN/Inf value.s. at valid pixels"):
        vmap(lambda x, m: fused(x, gt, m, backend=backend))(bad.expand(2, *bad.shape), mask)
    mask[1, 1, 0, 2, 3] = False
    out = vmap(lambda x, m: fused(x, gt, m, backend=backend))(bad.expand(2, *bad.shape), mask)
    assert out.shape == (2, 2, 78) and torch.isfinite(out).all()
    with FakeTensorMode() as mode:
        out = mlrb.fused_loss_space(mode.from_tensor(bad), mode.from_tensor(gt), backend=backend)
    assert out.shape == (2, 78)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        mlrb.fused_loss_space(*pair(), backend="cuda")


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(ls, "_unavailable_reason", lambda name, device: "not built")
    monkeypatch.setattr(ls, "_warned", set())
    pred, gt = pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = mlrb.fused_loss_space(pred, gt)
        mlrb.fused_loss_space(pred, gt)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "not built" in msgs[0] and "reference" in msgs[0]
    assert torch.equal(a, mlrb.fused_loss_space(pred, gt, backend="reference"))
    with pytest.raises(RuntimeError, match="not built"):
        mlrb.fused_loss_space(pred, gt, backend="cpu")


def test_loss_space_module():
    pred, gt = pair()
    mod = mlrb.LossSpace("L^3 | L^4 | L^5", backend="reference")
    assert len(mod.names) == 39 and mod.names[0] == "D@3"
    assert torch.equal(mod(pred, gt), mlrb.fused_loss_space(pred, gt, select="L^3|L^4|L^5", backend="reference"))
    assert "n=39" in repr(mod)


# ---------------------------------------------------------------- compat
def test_compute_multi_loss_is_the_trainer_order():
    pred, gt = pair()
    out = compute_multi_loss(pred, gt, backend="reference")
    assert isinstance(out, list) and len(out) == 78 and out[0].shape == (2,)
    full = mlrb.fused_loss_space(pred, gt, backend="reference")
    for j, name in enumerate(mlrb.TRAINER_LOSS_NAMES):
        torch.testing.assert_close(out[j], full[:, mlrb.LOSS_NAMES.index(name)])


def test_compute_multi_loss_only_computes_enabled(monkeypatch):
    pred, gt = pair()
    valid = [0] * 78
    valid[1] = valid[20] = 1      # r@0 and the 8th loss of scale 1 (Nr@1) in trainer order
    seen = {}
    real = ls.fused_loss_space

    def spy(*a, **kw):
        seen["select"] = kw["select"]
        return real(*a, **kw)
    monkeypatch.setattr("mlrb.compat.fused_loss_space", spy)
    out = compute_multi_loss(pred, gt, torch.tensor(valid), backend="reference")
    assert seen["select"] == ["r@0", "Nr@1"]
    assert all(torch.equal(v, torch.zeros(2)) for j, v in enumerate(out) if j not in (1, 20))
    assert out[1].abs().sum() > 0 and out[20].abs().sum() > 0
    with pytest.raises(ValueError, match="78 entries"):
        compute_multi_loss(pred, gt, [1] * 77)
    for dtype in (torch.float32, torch.float64):  # all off: the zeros have the losses' dtype
        off = compute_multi_loss(pred.to(dtype), gt.to(dtype), [0] * 78, backend="reference")
        some = compute_multi_loss(pred.to(dtype), gt.to(dtype), valid, backend="reference")
        assert {v.dtype for v in off} == {v.dtype for v in some} == {dtype}


def test_demo_runs(capsys):
    from mlrb import demo
    assert demo.main(["--batch", "1", "--size", "40x56", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "k=5" in out and "gradient norm" in out


def test_cli_dispatch(capsys):
    from mlrb import cli
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2


def test_fused_loss_space_compiles_fullgraph():
    # Selection and backend choice happen at trace time; the graph holds only tensor work.
    pred, gt = pair()
    mask = torch.rand(pred.shape, generator=torch.Generator().manual_seed(5)) > 0.2
    fn = lambda p, g, m: mlrb.fused_loss_space(p, g, m, select="L^1 | Si", backend="reference")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    out = compiled(a, gt, mask)
    out.sum().backward()
    fn(b, gt, mask).sum().backward()
    assert out.shape == (2, 14)
    torch.testing.assert_close(a.grad, b.grad)
