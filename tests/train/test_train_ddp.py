"""Two-process DDP smoke run on CPU (gloo): ranks stay in lockstep, the weighter is synchronised."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent("""
    import sys, warnings, torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from mlrb.train.trainer import TrainConfig, Trainer
    out, res = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(synthetic_train=32, synthetic_val=8, size=(64, 64), n_d=64, batch_size=4, epochs=2,
                      lr=1e-3, out_dir=out, progress=False, dist_timeout_s=60, ckpt_every=3)
    tr = Trainer(cfg)
    summary = tr.fit()
    params = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    torch.save({"rank": tr.rank, "world": tr.world, "weights": tr.weighter.weights.clone(),
                "periods": tr.weighter.periods_ended, "params": params, "summary": summary,
                "steps_per_epoch": tr.steps_per_epoch}, res)
    tr.close()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "run"), str(tmp_path / f"r{rank}.pt")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=180)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-4000:]
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=False) for r in range(2))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    # 32 samples / 2 ranks / batch 4 = 4 steps per epoch, 2 epochs, 4 periods per epoch.
    assert r0["steps_per_epoch"] == 4 and r0["summary"]["steps"] == 8
    assert r0["periods"] == r1["periods"] == 8
    # Same model (DDP) and same loss weights (the weighter all-reduces at end_period) on both ranks,
    # and the weights really moved away from 1/n.
    assert torch.equal(r0["params"], r1["params"])
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.allclose(r0["weights"], torch.full_like(r0["weights"], 1 / 78))
    # Only rank 0 writes the logs; evaluation was merged over the ranks.
    lines = (tmp_path / "run" / "periods.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[-1])["weights"] == r0["weights"].tolist()
    assert r0["summary"]["metrics_after"] == r1["summary"]["metrics_after"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
