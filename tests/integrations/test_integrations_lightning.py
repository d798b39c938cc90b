"""Lightning mix-in: the example trains, the weighter's state rides in checkpoints and resumes
exactly, period ends follow trainer.num_training_batches, weights are logged, DDP ranks agree."""
import importlib
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader  # noqa: E402

from mlrb.train import SyntheticDepth  # noqa: E402

from integrations_examples import EXAMPLES, load_example  # noqa: E402

REPO = str(EXAMPLES.parent)
ENCODER = "mobilenetv3_small_050"   # 0.3M parameters: a step costs milliseconds
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
             num_sanity_val_steps=0, accelerator="cpu", devices=1)


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    # Tiny tensors: one thread is faster than two, and spares the shared CI cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|log_every_n_steps).*")
        yield
    torch.set_num_threads(threads)


def _loader(n=8, batch=2):
    return DataLoader(SyntheticDepth(n, size=(32, 32), seed=0), batch_size=batch, shuffle=False)


def _model(**kw):
    torch.manual_seed(0)
    return load_example("lightning_depth").DepthModel(encoder=ENCODER, n_d=32, **kw)


def test_example_runs_and_logs(tmp_path):
    mod = load_example("lightning_depth")
    model, trainer = mod.main(["--epochs", "1", "--size", "32x32", "--train-images", "6", "--val-images", "2",
                               "--batch-size", "2", "--n-d", "32", "--encoder", ENCODER, "--accelerator", "cpu", "--devices", "1",
                               "--out", str(tmp_path / "run")])
    w = model.weighter
    assert trainer.num_training_batches == 3
    assert w.periods_ended == 3                    # ends ceil(q*3/4)-1 = {0, 1, 2}: three distinct points
    logged = trainer.logged_metrics
    assert float(logged["mlrb/weight/D@0"]) == pytest.approx(float(w.weights[0]))
    assert float(logged["mlrb/contribution/Nc@5"]) == pytest.approx(float(w.contributions[-1]))
    assert float(logged["mlrb/period"]) == 3
    assert {"mlrb/loss", "mlrb/val_loss", "val/abs_rel", "val/d1"} <= set(trainer.callback_metrics)
    assert (tmp_path / "run" / "last.ckpt").is_file()


def test_checkpoint_resume_carries_the_weighter(tmp_path):
    # 4 batches per epoch: period ends at batches 0, 1, 2, 3 (the paper's ceil(q*I/4)-1).
    straight = _model()
    L.Trainer(max_epochs=2, **QUIET).fit(straight, _loader())
    assert straight.weighter.periods_ended == 8

    first = _model()
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(first, _loader())
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert int(state["weighter.period"]) == 4 and "weighter.weights" in state
    assert torch.equal(state["weighter.weights"], first.weighter.weights)

    resumed = _model()                               # a fresh weighter: everything comes from the file
    L.Trainer(max_epochs=2, **QUIET).fit(resumed, _loader(), ckpt_path=ckpt)
    assert resumed.weighter.periods_ended == 8
    torch.testing.assert_close(resumed.weighter.weights, straight.weighter.weights, rtol=1e-6, atol=0)
    torch.testing.assert_close(resumed.weighter.last_mean, straight.weighter.last_mean, rtol=1e-6, atol=0)


def test_checkpoint_after_a_batch_holds_its_period_end(tmp_path):
    # ModelCheckpoint runs in on_train_batch_end, before the module's own hook: the period
    # of that batch must already be ended (the mix-in ends it inside the training step).
    model = _model(select="D0 | L^0")
    every = L.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1,
                                        filename="{step}")
    L.Trainer(max_epochs=1, **{**QUIET, "enable_checkpointing": True}, callbacks=[every]).fit(model, _loader())
    for step in range(1, 5):                         # I = 4: every batch ends a period
        state = torch.load(tmp_path / f"step={step}.ckpt", weights_only=False)["state_dict"]
        assert int(state["weighter.period"]) == step and int(state["weighter.period_count"]) == 0


def test_limit_train_batches_and_own_period_mode():
    from mlrb.weighting import FixedWeights, MultiLossRebalancer

    model = _model(select="D0 | L_G")
    assert model.weighter.n == 31
    L.Trainer(max_epochs=1, limit_train_batches=2, **QUIET).fit(model, _loader())
    assert model.weighter.periods_ended == 2         # I = 2: ends at 0 and 1

    model = _model(select="D0")                      # the weighter's own schedule wins
    model.configure_loss_space("D0", weighter=MultiLossRebalancer(1, steps_per_period=3))
    L.Trainer(max_epochs=1, **QUIET).fit(model, _loader())
    assert model.weighter.periods_ended == 1
    with pytest.raises(ValueError, match="n=2"):
        model.configure_loss_space("D@0, D@1", weighter=FixedWeights(3, 1.0))


def test_missing_lightning_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "mlrb.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install mlrb\[lightning\]"):
        importlib.import_module("mlrb.integrations.lightning")


WORKER = textwrap.dedent("""
    import importlib.util, sys, warnings, torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("lightning_depth", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); sys.modules["lightning_depth"] = mod; spec.loader.exec_module(mod)
    model, trainer = mod.main(["--epochs", "1", "--size", "32x32", "--train-images", "8", "--val-images", "2",
                               "--batch-size", "2", "--n-d", "32", "--accelerator", "cpu", "--devices", "2",
                               "--strategy", "ddp", "--encoder", "mobilenetv3_small_050", "--out", sys.argv[2]])
    torch.save({"rank": trainer.global_rank, "weights": model.weighter.weights.clone(),
                "periods": model.weighter.periods_ended}, sys.argv[3])
""")


def test_ddp_ranks_hold_identical_weights(tmp_path):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(EXAMPLES / "lightning_depth.py"), str(tmp_path / "run"),
             str(tmp_path / f"r{rank}.pt")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-4000:]
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in range(2))
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["periods"] == r1["periods"] == 2       # 8 images / 2 ranks / batch 2 = 2 batches per rank
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.allclose(r0["weights"], torch.full_like(r0["weights"], 1 / 78))  # rebalanced
