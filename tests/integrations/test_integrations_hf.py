"""Hugging Face transformers: the example trains a tiny random DPT in a plain loop and through
RebalancingTrainer (compute_loss override); the weighter rides in checkpoints and resumes."""
import importlib
import json
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from integrations_examples import load_example  # noqa: E402
from mlrb.integrations.hf import WEIGHTER_FILE, depth_mask, predicted_depth  # noqa: E402

TINY = ["--size", "32", "--train-images", "4", "--batch-size", "2", "--cpu"]


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    # Tiny tensors: one thread is faster than two, and spares the shared CI cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


def test_predicted_depth_and_mask():
    out = {"predicted_depth": torch.arange(16.0).view(1, 4, 4)}
    assert predicted_depth(out, (4, 4)).shape == (1, 1, 4, 4)
    up = predicted_depth(out, (8, 6))
    assert up.shape == (1, 1, 8, 6) and float(up.min()) >= 0 and float(up.max()) <= 15
    with pytest.raises(TypeError, match="predicted_depth"):
        predicted_depth({"logits": torch.zeros(1)}, (4, 4))
    gt = torch.tensor([[1.0, 0.0], [float("nan"), 2.0]])
    assert depth_mask(gt).tolist() == [[True, False], [False, True]]
    assert depth_mask(torch.ones(2, 2)) is None


def test_plain_loop_example(tmp_path):
    model, weighter = load_example("hf_dpt_depth").main(["--mode", "loop", "--epochs", "2", *TINY,
                                                          "--out", str(tmp_path)])
    assert weighter.periods_ended == 4               # 2 batches per epoch: ends at 0 and 1
    assert not torch.allclose(weighter.weights, torch.full_like(weighter.weights, 1 / 78))
    state = torch.load(tmp_path / WEIGHTER_FILE)
    assert int(state["period"]) == 4 and (tmp_path / "config.json").is_file()


def test_trainer_example_logs_and_resumes_exactly(tmp_path):
    pytest.importorskip("accelerate")                # the Trainer needs it (the [hf] extra pulls it)
    example = load_example("hf_dpt_depth")
    args = ["--mode", "trainer", "--epochs", "2", "--logging-steps", "1", *TINY]
    model, straight = example.main([*args, "--out", str(tmp_path / "a")])
    w = straight.weighter
    assert w.periods_ended == 4
    logs = [h for h in straight.state.log_history if "loss" in h]
    assert len(logs) == 4 and [h["mlrb/period"] for h in logs] == [1, 2, 3, 4]
    assert logs[-1]["mlrb/weight/D@0"] == pytest.approx(float(w.weights[0]))
    assert logs[-1]["mlrb/contribution/D@0"] == pytest.approx(float(w.contributions[0]))
    ckpt = tmp_path / "a" / "checkpoint-2"            # end of epoch 1
    assert int(torch.load(ckpt / WEIGHTER_FILE)["period"]) == 2
    assert int(torch.load(tmp_path / "a" / WEIGHTER_FILE)["period"]) == 4
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2

    _, resumed = example.main([*args, "--out", str(tmp_path / "b"), "--resume", str(ckpt)])
    assert resumed.weighter.periods_ended == 4
    torch.testing.assert_close(resumed.weighter.weights, w.weights, rtol=1e-6, atol=0)
    torch.testing.assert_close(resumed.weighter.last_mean, w.last_mean, rtol=1e-6, atol=0)


def test_trainer_needs_labels_and_matching_weighter(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    from mlrb.integrations.hf import RebalancingTrainer
    from mlrb.weighting import FixedWeights

    example = load_example("hf_dpt_depth")
    model = example.tiny_dpt(32)
    targs = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="n=2"):
        RebalancingTrainer(model=model, args=targs, select="D@0, D@1", weighter=FixedWeights(3, 1.0))
    trainer = RebalancingTrainer(model=model, args=targs, select="D0")
    with pytest.raises(ValueError, match="labels"):
        trainer.compute_loss(model, {"pixel_values": torch.zeros(1, 3, 32, 32)})
    batch = example.DepthPairs(2, 32)[0]
    batch = {k: v.unsqueeze(0) for k, v in batch.items()}
    batch["labels"][0, :8] = 0                       # invalid rows: masked out, not read
    model.eval()
    loss, out = trainer.compute_loss(model, batch, return_outputs=True)
    pred = predicted_depth(out, (32, 32))
    want = (pred - batch["labels"].unsqueeze(1)).abs()[..., 8:, :].mean()
    torch.testing.assert_close(loss, want.to(loss.dtype))   # D@0 is the mean absolute error
    assert trainer.weighter.periods_ended == 0 and trainer.weighter._count == 0  # eval: nothing accumulated


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "mlrb.integrations.hf", raising=False)
    with pytest.raises(ImportError, match=r"pip install mlrb\[hf\]"):
        importlib.import_module("mlrb.integrations.hf")


def test_trainer_without_accelerate_names_the_extra(monkeypatch, tmp_path):
    from mlrb.integrations.hf import RebalancingTrainer

    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(ImportError, match=r"accelerate.*pip install mlrb\[hf\]"):
        RebalancingTrainer(model=load_example("hf_dpt_depth").tiny_dpt(32), args=None)


def test_depth_anything_metric_head_with_the_loop_helpers():
    # The pretrained line of the README swaps in Depth Anything; its output goes through the
    # same two helpers (tiny random config here: nothing is downloaded).
    import mlrb
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=28, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="metric", max_depth=10))
    gt = torch.rand(2, 1, 28, 28) * 5 + 1
    gt[:, :, :3] = 0                                  # sparse rows
    pred = predicted_depth(model(pixel_values=torch.rand(2, 3, 28, 28)), gt.shape[-2:])
    weighter = mlrb.MultiLossRebalancer(78)
    loss = weighter(mlrb.fused_loss_space(pred, gt, depth_mask(gt)))
    loss.backward()
    assert pred.shape == (2, 1, 28, 28) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.head.parameters())
