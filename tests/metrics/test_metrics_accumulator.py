"""MetricAccumulator: streaming = one-shot, merge, state dict, torch.distributed all_reduce."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlrb.metrics import MetricAccumulator, depth_metrics

CAPS = {"min_depth": 1e-3, "max_depth": 10.0}
REPO = Path(__file__).resolve().parents[2]


def _data(seed=0, b=7):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 9, 11, generator=g) * 12
    gt[3] = 20.0  # image 3 has no valid pixel
    pred = gt * (0.8 + 0.4 * torch.rand(b, 9, 11, generator=g))
    return pred, gt


def test_streaming_and_merge_equal_one_shot():
    pred, gt = _data()
    one_shot = depth_metrics(pred, gt, **CAPS)
    stream = MetricAccumulator()
    for i in range(0, 7, 3):
        stream.update_depth(pred[i:i + 3], gt[i:i + 3], **CAPS)
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update_depth(pred[:2], gt[:2], **CAPS)
    b.update_depth(pred[2:], gt[2:], **CAPS)
    merged = a.merge(b)
    for acc in (stream, merged):
        got = acc.compute()
        assert acc.num_images == 6 and acc.skipped == 1
        assert got.keys() == one_shot.keys()
        for k in one_shot:
            assert got[k] == pytest.approx(one_shot[k], rel=1e-12)


def test_update_per_key_validity_and_errors():
    acc = MetricAccumulator()
    acc.update({"x": torch.tensor([1.0, 2.0, 100.0])}, torch.tensor([True, True, False]))
    acc.update({"x": 3.0, "y": torch.tensor([4.0, 6.0])}, {"y": torch.tensor([True, True])})
    assert acc.compute() == {"x": 2.0, "y": 5.0}
    assert acc.counts == {"x": 3, "y": 2}
    with pytest.raises(ValueError, match="non-finite"):
        acc.update({"x": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match="shape"):
        acc.update({"x": torch.tensor([1.0, 2.0])}, torch.tensor([True]))
    state = acc.state_dict()
    other = MetricAccumulator()
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.compute() == acc.compute()
    acc.reset()
    assert acc.compute() == {} and acc.num_images == 0


def test_all_reduce_without_process_group_is_noop():
    acc = MetricAccumulator()
    acc.update({"x": torch.tensor([1.0])})
    assert acc.all_reduce() is acc and acc.compute() == {"x": 1.0}


WORKER = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from mlrb.metrics import MetricAccumulator
    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 9, 11, generator=g) * 12
    gt[3] = 20.0
    pred = gt * (0.8 + 0.4 * torch.rand(6, 9, 11, generator=g))
    acc = MetricAccumulator()
    acc.update_depth(pred[rank::world], gt[rank::world], min_depth=1e-3, max_depth=10.0)
    if rank == 1:
        acc.update({"only_rank1": torch.tensor([5.0])})
    acc.all_reduce()
    print(json.dumps({"metrics": acc.compute(), "skipped": acc.skipped,
                      "n": acc.num_images}))
    dist.destroy_process_group()
""")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_all_reduce_two_processes_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'store'}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", init], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 9, 11, generator=g) * 12
    gt[3] = 20.0
    pred = gt * (0.8 + 0.4 * torch.rand(6, 9, 11, generator=g))
    want = depth_metrics(pred, gt, **CAPS)
    for res in results:
        assert res["skipped"] == 1 and res["n"] == 5
        assert res["metrics"]["only_rank1"] == 5.0
        for k, v in want.items():
            assert res["metrics"][k] == pytest.approx(v, rel=1e-12)
    assert results[0] == results[1]
