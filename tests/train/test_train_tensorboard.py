"""--tensorboard: event files with losses, weights, lr and metrics; a clear message without the package."""
import sys

import pytest

from mlrb.train.trainer import TrainConfig, Trainer


def tiny(tmp_path, **kw):
    return TrainConfig(synthetic_train=8, synthetic_val=2, size=(32, 32), n_d=32, batch_size=4, epochs=1,
                       select="D@0|M@0", out_dir=str(tmp_path / "run"), progress=False, eval_before=False, **kw)


def test_tensorboard_events_hold_the_logs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Trainer(tiny(tmp_path, tensorboard=True))
    t.fit()
    t.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"total", "lr", "lambda", "metrics/abs_rel"} <= tags
    assert {f"{k}/{n}" for k in ("loss", "weight", "contribution") for n in t.names} <= tags
    assert len(acc.Scalars("weight/" + t.names[0])) == 2  # two periods (4 per epoch, 2 steps)


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        Trainer(tiny(tmp_path, tensorboard=True))
    assert not (tmp_path / "run").exists()
