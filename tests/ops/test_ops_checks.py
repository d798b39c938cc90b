"""Bad input at the lowest layers: the extension mlrb._C and the registered ops.

mlrb.fused_loss_space checks its inputs, but the ops (torch.ops.mlrb.*, mlrb_triton.*) and
mlrb._C are callable on their own; whatever reaches them must work or raise a Python
exception, never crash the process. Calls that once crashed it (an empty batch: SIGFPE in
the C++ code) run in a child process, so a regression fails a test instead of killing the
test run.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch

import mlrb
from ops_cases import make_inputs

cpu = pytest.importorskip("mlrb.ops.cpu")
HAVE_CPU = cpu.unavailable_reason(torch.device("cpu")) is None

# Each case: a name and a statement; the child prints "name: ExceptionType: message" or
# "name: ok". p, g: float32 (B, H, W) arrays, m: a bool mask, z: an empty batch.
_C_CASES = {
    "empty batch, forward": "_C.loss_space_forward(z, z, None, [0], 1.0, False, 1.0, 1)",
    "empty batch, backward": "_C.loss_space_backward(np.zeros((0, 1)), z, z, None, [0], 1.0, False, 1.0, 1)",
    "empty batch, masked": "_C.loss_space_forward(z, z, z > 0, [0, 79], 1.0, True, 1.0, 2)",
    "empty rows": "_C.loss_space_forward(p[:, :0].copy(), g[:, :0].copy(), None, [0], 1.0, False, 1.0, 1)",
    "empty columns": "_C.loss_space_forward(p[:, :, :0].copy(), g[:, :, :0].copy(), None, [0], 1.0, False, 1.0, 1)",
    "op, empty batch": "torch.ops.mlrb.loss_space_cpu_fwd(t[:0], t[:0], None, [0], 1.0, False, 1.0)",
    "op bwd, empty batch": "torch.ops.mlrb.loss_space_cpu_bwd(torch.ones(0, 1), t[:0], t[:0], None, [0], 1.0, False, 1.0)",
    "2-d pred": "_C.loss_space_forward(p[0], g[0], None, [0], 1.0, False, 1.0, 1)",
    "shapes differ": "_C.loss_space_forward(p, g[:, :4].copy(), None, [0], 1.0, False, 1.0, 1)",
    "mask shape": "_C.loss_space_forward(p, g, m[:, :4].copy(), [0], 1.0, False, 1.0, 1)",
    "no indices": "_C.loss_space_forward(p, g, None, [], 1.0, False, 1.0, 1)",
    "index -1": "_C.loss_space_forward(p, g, None, [-1], 1.0, False, 1.0, 1)",
    "index 80": "_C.loss_space_forward(p, g, None, [80], 1.0, False, 1.0, 1)",
    "0 threads": "_C.loss_space_forward(p, g, None, [0], 1.0, False, 1.0, 0)",
    "too many threads": "_C.loss_space_forward(p, g, None, [0], 1.0, False, 1.0, 10**6)",
    "grad_out shape": "_C.loss_space_backward(np.ones((2, 1)), p, g, None, [0, 1], 1.0, False, 1.0, 1)",
    "non-contiguous pred": "_C.loss_space_forward(p[:, :, ::2], g[:, :, ::2], None, [0], 1.0, False, 1.0, 1)",
    "mixed dtypes": "_C.loss_space_forward(p, g.astype(np.float64), None, [0], 1.0, False, 1.0, 1)",
    "int arrays": "_C.loss_space_forward(p.astype(np.int32), g.astype(np.int32), None, [0], 1.0, False, 1.0, 1)",
    "float mask": "_C.loss_space_forward(p, g, m.astype(np.float32), [0], 1.0, False, 1.0, 1)",
    "huge map": "_C.loss_space_forward(big, big, None, [0], 1.0, False, 1.0, 1)",
    "fine": "_C.loss_space_forward(p, g, m, list(range(80)), 1.0, False, 1.0, 1)",
}
_C_EXPECTED = {
    "empty batch, forward": ("ValueError", "empty"),
    "empty batch, backward": ("ValueError", "empty"),
    "empty batch, masked": ("ValueError", "empty"),
    "empty rows": ("ValueError", "empty"),
    "empty columns": ("ValueError", "empty"),
    "op, empty batch": ("ValueError", "empty"),
    "op bwd, empty batch": ("ValueError", "empty"),
    "2-d pred": ("ValueError", r"\(B, H, W\)"),
    "shapes differ": ("ValueError", "shapes differ"),
    "mask shape": ("ValueError", "mask shape"),
    "no indices": ("ValueError", "indices is empty"),
    "index -1": ("ValueError", "out of range: -1"),
    "index 80": ("ValueError", "out of range: 80"),
    "0 threads": ("ValueError", "num_threads"),
    "too many threads": ("ValueError", "num_threads"),
    "grad_out shape": ("ValueError", "grad_out must be"),
    "non-contiguous pred": ("TypeError", "incompatible function arguments"),
    "mixed dtypes": ("TypeError", "incompatible function arguments"),
    "int arrays": ("TypeError", "incompatible function arguments"),
    "float mask": ("TypeError", "incompatible function arguments"),
    "huge map": ("ValueError", "too large"),
    "fine": ("ok", ""),
}


@pytest.mark.skipif(not HAVE_CPU, reason="mlrb._C is not built")
def test_extension_and_cpu_ops_raise_instead_of_crashing(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, torch
        import mlrb.ops.cpu
        from mlrb import _C
        rng = np.random.default_rng(0)
        p = (rng.random((2, 9, 11)) + 1).astype(np.float32)
        g = (rng.random((2, 9, 11)) + 1).astype(np.float32)
        m = rng.random((2, 9, 11)) > 0.3
        z = np.zeros((0, 9, 11), np.float32)
        t = torch.from_numpy(p)[:, None]
        # A (1, 2^28 + 1, 1) map backed by a sparse file: refused before a byte is read.
        big = np.memmap({str(tmp_path / "big.f32")!r}, dtype=np.float32, mode="w+", shape=(1, 2**28 + 1, 1))
        for name, code in {_C_CASES!r}.items():
            try:
                eval(code)
                print(f"{{name}}: ok", flush=True)
            except Exception as exc:
                print(f"{{name}}: {{type(exc).__name__}}: {{str(exc).splitlines()[0]}}", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the child process died (rc {done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}"
    got = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert set(got) == set(_C_CASES), done.stdout
    for name, (kind, match) in _C_EXPECTED.items():
        assert got[name].startswith(kind), f"{name}: {got[name]}"
        if match:
            assert re.search(match, got[name]), f"{name}: {got[name]}"


def _op_cases(fwd, bwd, dtype):
    """(name, call, exception, match) for the forward / backward op of a backend."""
    pred, gt, m = make_inputs(2, 12, 14, dtype=dtype, mask="holes")
    idx = [0, 10, 79]
    G = torch.ones(2, 3)
    return [
        ("empty batch", lambda: fwd(pred[:0], gt[:0], None, idx, 1.0, False, 1.0), ValueError, "empty"),
        ("3-d pred", lambda: fwd(pred[:, 0], gt[:, 0], None, idx, 1.0, False, 1.0), ValueError, r"\(B, 1, H, W\)"),
        ("2 channels", lambda: fwd(pred.expand(2, 2, 12, 14), gt.expand(2, 2, 12, 14), None, idx, 1.0, False, 1.0),
         ValueError, r"\(B, 1, H, W\)"),
        ("shapes differ", lambda: fwd(pred, gt[..., :7], None, idx, 1.0, False, 1.0), ValueError, "shapes differ"),
        ("int pred", lambda: fwd(pred.int(), gt.int(), None, idx, 1.0, False, 1.0), TypeError, "pred must be one of"),
        ("float mask", lambda: fwd(pred, gt, m.float(), idx, 1.0, False, 1.0), TypeError, "mask must be"),
        ("mask shape", lambda: fwd(pred, gt, m[..., :7], idx, 1.0, False, 1.0), ValueError, "mask shape"),
        ("mask device", lambda: fwd(pred, gt, m.to("meta"), idx, 1.0, False, 1.0), ValueError, "mask is on meta"),
        ("no indices", lambda: fwd(pred, gt, m, [], 1.0, False, 1.0), ValueError, "indices is empty"),
        ("index 80", lambda: fwd(pred, gt, m, [80], 1.0, False, 1.0), ValueError, "out of range: 80"),
        ("index -1", lambda: fwd(pred, gt, m, [-1], 1.0, False, 1.0), ValueError, "out of range: -1"),
        ("duplicate index", lambda: fwd(pred, gt, m, [0, 0], 1.0, False, 1.0), ValueError, "distinct"),
        ("nan lambda", lambda: fwd(pred, gt, m, idx, float("nan"), False, 1.0), ValueError, "si_lambda"),
        ("inf scale", lambda: fwd(pred, gt, m, idx, 1.0, False, float("inf")), ValueError, "si_scale"),
        ("grad shape", lambda: bwd(G[:, :2], pred, gt, m, idx), ValueError, r"grad must be \(B, len"),
        ("int grad", lambda: bwd(G.int(), pred, gt, m, idx), TypeError, "grad must be a floating"),
        ("grad, empty batch", lambda: bwd(G[:0], pred[:0], gt[:0], m[:0], idx), ValueError, "empty"),
    ]


def _cpu_ops():
    def fwd(*args):
        return torch.ops.mlrb.loss_space_cpu_fwd(*args)

    def bwd(G, pred, gt, mask, idx):
        return torch.ops.mlrb.loss_space_cpu_bwd(G, pred, gt, mask, idx, 1.0, False, 1.0)

    return fwd, bwd


@pytest.mark.skipif(not HAVE_CPU, reason="mlrb._C is not built")
def test_cpu_ops_name_bad_input():
    fwd, bwd = _cpu_ops()
    cases = _op_cases(fwd, bwd, torch.float32)
    pred, gt, _ = make_inputs(1, 8, 9)
    cases.append(("mixed dtypes", lambda: fwd(pred, gt.double(), None, [0], 1.0, False, 1.0), TypeError,
                  "dtypes differ"))
    cases.append(("half", lambda: fwd(pred.half(), gt.half(), None, [0], 1.0, False, 1.0), TypeError,
                  "float32, torch.float64"))
    for name, call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.skipif(not HAVE_CPU, reason="mlrb._C is not built")
def test_cpu_op_accepts_any_strides():
    """The op itself (not only fused_loss_space) copies non-contiguous inputs for the kernels."""
    fwd, bwd = _cpu_ops()
    pred, gt, m = make_inputs(2, 12, 14, dtype=torch.float64, mask="holes")
    idx = [0, 10, 40, 79]

    def strided(x):
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)

    assert not strided(pred).is_contiguous()
    want = fwd(pred, gt, m, idx, 1.0, False, 1.0)
    assert torch.equal(fwd(strided(pred), strided(gt), strided(m), idx, 1.0, False, 1.0), want)
    G = torch.rand(2, 4, dtype=torch.float64)
    assert torch.equal(bwd(G.t().contiguous().t(), strided(pred), strided(gt), strided(m), idx),
                       bwd(G, pred, gt, m, idx))


def test_triton_ops_name_bad_input():
    triton_backend = pytest.importorskip("mlrb.ops.triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if triton_backend.unavailable_reason(device) is not None:
        pytest.skip(triton_backend.unavailable_reason(device))
    if device != "cpu":
        pytest.skip("the cases are built on CPU tensors (interpreter)")

    def fwd(*args):
        return torch.ops.mlrb_triton.loss_space_fwd(*args, False)

    pred, gt, m = make_inputs(2, 12, 14, mask="holes")
    idx = [0, 10, 79]
    _, stats, ws = torch.ops.mlrb_triton.loss_space_fwd(pred, gt, m, idx, 1.0, False, 1.0, True)

    def bwd(G, p, g, mask, idx, ws=ws, stats=stats):
        return torch.ops.mlrb_triton.loss_space_bwd(G, p, mask, ws, stats, idx, 1.0, False, 1.0)

    cases = _op_cases(fwd, bwd, torch.float32)
    G = torch.ones(2, 3)
    cases += [
        ("float64", lambda: fwd(pred.double(), gt.double(), None, idx, 1.0, False, 1.0), TypeError, "float16"),
        ("short workspace", lambda: bwd(G, pred, gt, m, idx, ws=ws[:10]), ValueError, "ws must be"),
        ("float64 stats", lambda: bwd(G, pred, gt, m, idx, stats=stats.double()), ValueError, "stats must be"),
    ]
    for name, call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.skipif(not HAVE_CPU, reason="mlrb._C is not built")
def test_cpu_op_never_asks_for_more_threads_than_the_extension_allows(monkeypatch):
    from mlrb import _C

    monkeypatch.setattr(torch, "get_num_threads", lambda: 10 * _C.MAX_THREADS)
    assert cpu._threads() == _C.MAX_THREADS


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_every_layer_refuses_the_same_input(backend):
    """An empty batch and non-finite AMLR options: the same ValueError from
    fused_loss_space on every backend as from the ops and mlrb._C above."""
    from mlrb import loss_space as ls

    if backend != "reference" and ls._unavailable_reason(backend, torch.device("cpu")) is not None:
        pytest.skip(ls._unavailable_reason(backend, torch.device("cpu")))
    pred, gt, m = make_inputs(1, 8, 9)
    with pytest.raises(ValueError, match="empty"):
        mlrb.fused_loss_space(pred[:0], gt[:0], m, backend=backend)
    for bad in (dict(si_lambda=float("nan")), dict(si_scale=float("inf"))):
        with pytest.raises(ValueError, match="must be finite"):
            mlrb.fused_loss_space(pred, gt, select="Si", backend=backend, **bad)
