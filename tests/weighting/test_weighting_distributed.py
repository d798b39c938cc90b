"""Under torch.distributed (2 processes, gloo, CPU) ranks that see different losses end every
period with identical weights, equal to those of one process that saw all the losses."""
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlrb.weighting import AMLRRebalancer, MultiLossRebalancer

N = 6
WORLD = 2
# Steps each rank takes in each period: uneven, so the all-reduced counts matter.
STEPS = [(3, 2), (1, 4), (2, 2), (4, 1)]
TIMEOUT_S = 60


def _data():
    """data[p][r][k]: the (B, N) losses rank r sees at step k of period p."""
    g = torch.Generator().manual_seed(7)
    scale = torch.logspace(-2, 1, N)
    out = []
    for p, per_rank in enumerate(STEPS):
        decay = torch.linspace(1.0, 0.5, N) ** p
        # Batch sizes 1..4 that differ between steps and ranks: the period means are means
        # over samples, so the all-reduced sample counts matter too.
        out.append([[torch.rand(1 + (2 * i + r + p) % 4, N, generator=g) * scale * decay for i in range(k)]
                    for r, k in enumerate(per_rank)])
    return out


def _weighters():
    return {"rebalance": MultiLossRebalancer(N, lam=1.5), "amlr": AMLRRebalancer(N, lam=0.01)}


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        ws = _weighters()
        history = {k: [] for k in ws}
        for period in _data():
            for name, w in ws.items():
                for x in period[rank]:
                    w(x)
                w.end_period()
                history[name].append(w.weights.clone())
        torch.save(history, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ranks_agree_with_a_single_process(tmp_path):
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S + 30
    try:
        while not ctx.join(timeout=1):  # raises if a rank failed
            if time.monotonic() > deadline:
                pytest.fail("distributed workers did not finish in time")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # One process that sees every rank's steps of a period.
    ws = _weighters()
    for p, period in enumerate(_data()):
        for name, w in ws.items():
            for r in range(WORLD):
                for x in period[r]:
                    w(x)
            w.end_period()
            samples = torch.cat([x for r in range(WORLD) for x in period[r]]).double()
            torch.testing.assert_close(w.last_mean, samples.mean(0), rtol=1e-12, atol=0)  # mean over samples
            assert torch.equal(ranks[0][name][p], ranks[1][name][p]), (name, p)
            torch.testing.assert_close(ranks[0][name][p], w.weights, rtol=1e-12, atol=0)
    # The periods really moved the weights (the test would notice a missing all-reduce).
    assert not torch.allclose(ranks[0]["rebalance"][-1], ranks[0]["rebalance"][0])
