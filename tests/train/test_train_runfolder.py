"""No run is lost: occupied run folders are refused, checkpoints are atomic and a broken one
is named, Ctrl-C leaves a resumable run, and every mistake is one line from `mlrb train`."""
import json
import os
import shlex
import signal

import pytest
import torch

from mlrb.cli import main as cli_main
from mlrb.train import checkpoint as ckpt
from mlrb.train.checkpoint import CheckpointError, atomic_save, read_checkpoint
from mlrb.train.interrupt import TrainingInterrupted
from mlrb.train.runfolder import RunFolderError
from mlrb.train.trainer import TrainConfig, Trainer


def tiny(out, **kw) -> TrainConfig:
    base = dict(synthetic_train=8, synthetic_val=2, size=(32, 32), n_d=32, batch_size=4, epochs=2,
                select="D@0|M@0", weighting="fixed", lr=1e-3, out_dir=str(out), progress=False,
                eval_before=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


TINY_ARGS = ["--synthetic-train", "8", "--synthetic-val", "2", "--size", "32", "32", "--n-d", "32",
             "--batch-size", "4", "--epochs", "2", "--select", "D@0|M@0", "--weighting", "fixed",
             "--no-eval-before", "--no-progress"]


@pytest.fixture(autouse=True)
def _quiet_backend_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*slower 'reference' backend.*")
        yield


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- run folder
@pytest.mark.parametrize("present", ["run.json+last.pt", "summary.json", "metrics.jsonl", "epoch001.pt"])
def test_a_folder_with_any_run_file_is_refused_without_resume(tmp_path, capsys, present):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    files = {"run.json+last.pt": ["run.json", "checkpoints/last.pt"], "summary.json": ["summary.json"],
             "metrics.jsonl": ["metrics.jsonl"], "epoch001.pt": ["checkpoints/epoch001.pt"]}[present]
    for f in files:
        (run / f).write_bytes(b"precious")
    with pytest.raises(RunFolderError, match="already holds a run.*--resume auto"):
        Trainer(tiny(run))
    assert cli_main(["train", *TINY_ARGS, "--out", str(run)]) != 0
    _one_line_error(capsys, str(run), "--resume auto")
    assert all((run / f).read_bytes() == b"precious" for f in files)  # nothing overwritten


def test_empty_folders_are_not_runs_and_resume_auto_needs_last_pt(tmp_path):
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)  # e.g. made by hand: usable
    from mlrb.train.runfolder import check_run_folder
    assert check_run_folder(str(tmp_path / "fresh"), None) is None
    assert check_run_folder(str(tmp_path / "new"), "auto") is None  # --resume auto on a new folder: fresh run
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    (tmp_path / "half" / "run.json").write_text("{}")
    (tmp_path / "half" / "checkpoints" / "epoch001.pt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="no checkpoints/last.pt.*checkpoints/epoch001.pt"):
        check_run_folder(str(tmp_path / "half"), "auto")
    # --resume PATH: a checkpoint of the folder itself, or any checkpoint into a new folder;
    # never another run's into this one (its logs and checkpoints would be overwritten)
    own = str(tmp_path / "half" / "checkpoints" / "epoch001.pt")
    assert check_run_folder(str(tmp_path / "half"), own) == own
    assert check_run_folder(str(tmp_path / "new"), own) == own
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    (tmp_path / "other" / "run.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"--out .*other already holds a run \(run.json\) and --resume "
                                             r".*epoch001.pt is not one of its checkpoints"):
        check_run_folder(str(tmp_path / "other"), own)


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli_main(["train", *TINY_ARGS, "--out", str(tmp_path / "file" / "run")]) != 0
    _one_line_error(capsys, "--out", "not a folder")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(RunFolderError, match="not writable"):
                Trainer(tiny(ro / "run"))
        finally:
            ro.chmod(0o700)


# ---------------------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_the_old_checkpoint_when_saving_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 1}, path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 2}, path)
    assert len(synced) == 2  # the file and its folder
    assert read_checkpoint(path)["step"] == 2

    real_save = torch.save

    def dies_half_way(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)
        fh.truncate(10)  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 3}, path)
    assert read_checkpoint(path)["step"] == 2
    assert os.listdir(tmp_path) == ["last.pt"]  # no partial temporary left behind


def test_truncated_or_empty_checkpoint_is_named_with_the_others(tmp_path, capsys):
    tr = Trainer(tiny(tmp_path / "run", epochs=1))
    tr.fit()  # writes checkpoints/epoch001.pt and last.pt
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    for broken in (data[: len(data) // 2], data[:5000], data[:20000], b""):  # (zip seeks past the end: OSError)
        last.write_bytes(broken)
        with pytest.raises(CheckpointError, match=r"last\.pt: checkpoint is (truncated or corrupt|empty).*"
                                                  r"epoch001\.pt.*--resume PATH"):
            Trainer(tiny(tmp_path / "run", resume="auto"))
        assert cli_main(["train", *TINY_ARGS, "--out", str(tmp_path / "run"), "--resume", str(last)]) != 0
        _one_line_error(capsys, str(last), "epoch001.pt")
    # the epoch checkpoint it names does resume, and the logs after it are redone, not duplicated
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "step": 4, "d1": 0.5}) + "\n")
    assert Trainer(tiny(tmp_path / "run", resume=str(last.parent / "epoch001.pt"))).global_step == 2
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [2]
    # a file that is not a checkpoint at all
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "weights.pt")  # e.g. a model's state dict
    with pytest.raises(CheckpointError, match="not an mlrb training checkpoint"):
        read_checkpoint(str(tmp_path / "weights.pt"))
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "model": {}}, tmp_path / "tagged.pt")  # the tag, little else
    assert cli_main(["train", *TINY_ARGS, "--out", str(tmp_path / "run2"), "--resume", str(tmp_path / "tagged.pt")]) != 0
    _one_line_error(capsys, "tagged.pt: an incomplete mlrb checkpoint (no config, optimizer")


# ---------------------------------------------------------------------------- Ctrl-C
@pytest.fixture
def ctrl_c_reaches_python():
    # A test run started in the background of a non-interactive shell inherits SIGINT
    # ignored, and the trainer then (rightly) leaves it ignored: give these tests the
    # interactive default for their duration.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_reaches_python")
def test_ctrl_c_saves_a_resumable_run_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        out = real_step(self, batch)
        if self.global_step == 2:  # during the third step (0-based 2): the user presses Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    assert cli_main(["train", *TINY_ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted after step 3" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["mlrb", "train"] and command[-4:] == ["--out", str(out), "--resume", "auto"]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(Trainer, "train_step", real_step)

    # A kill while a log line was written leaves a partial line: resuming drops it.
    with open(out / "periods.jsonl", "a") as fh:
        fh.write('{"period": 7, "losses": [0.1')
    with open(out / "losses.csv", "a") as fh:
        fh.write("7,1,")
    # Other settings: one line naming the difference.
    assert cli_main(["train", *[a if a != "D@0|M@0" else "D@0" for a in command[2:]]]) != 0
    _one_line_error(capsys, "settings differ", "select")
    assert cli_main(command[1:]) == 0  # the printed command, as `mlrb ...` runs it
    recs = [json.loads(line) for line in open(out / "periods.jsonl")]
    assert [r["period"] for r in recs] == list(range(4))  # 2 epochs x 2 periods (2 steps each), each once
    assert all(line.count(",") == 4 for line in open(out / "losses.csv"))


@pytest.mark.usefixtures("ctrl_c_reaches_python")
def test_fit_raises_training_interrupted_between_steps(tmp_path, monkeypatch):
    tr = Trainer(tiny(tmp_path / "run"))
    real_step = Trainer.train_step

    def step(self, batch):
        out = real_step(self, batch)
        if self.global_step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingInterrupted) as info:
        tr.fit()
    assert info.value.step == 1 and tr.interrupted
    assert read_checkpoint(info.value.checkpoint)["global_step"] == 1


def test_an_error_between_steps_keeps_the_work_done(tmp_path, capsys, monkeypatch):
    from mlrb.train.datasets import DataFileError

    real_loader = Trainer._loader

    def breaks_after_three_steps(self, epoch, start):
        for i, batch in enumerate(real_loader(self, epoch, start)):
            if self.global_step == 3:
                raise DataFileError("cannot read image file /data/rgb_0042.png: truncated")
            yield batch

    monkeypatch.setattr(Trainer, "_loader", breaks_after_three_steps)
    out = tmp_path / "run"
    assert cli_main(["train", *TINY_ARGS, "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rgb_0042.png: truncated" in err and "--resume auto" in err
    assert read_checkpoint(str(out / "checkpoints" / "last.pt"))["global_step"] == 3
    monkeypatch.setattr(Trainer, "_loader", real_loader)
    assert Trainer(tiny(out, resume="auto")).global_step == 3


# ---------------------------------------------------------------------------- non-finite loss
def test_a_nan_loss_stops_at_its_step_keeps_the_run_and_is_one_line(tmp_path, capsys, monkeypatch):
    """The weighter refuses the NaN step before anything is updated, so the trainer keeps the
    work of the steps before it in last.pt and `mlrb train` says what happened in one line."""
    from mlrb.train.trainer import NonFiniteLossError

    real = Trainer.compute_losses
    calls = {"n": 0}

    def nan_on_second_step(self, batch):
        losses = real(self, batch)
        calls["n"] += 1
        return losses * float("nan") if calls["n"] == 2 else losses

    monkeypatch.setattr(Trainer, "compute_losses", nan_on_second_step)
    run = tmp_path / "run"
    trainer = Trainer(tiny(run))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2 .*D@0"):
        trainer.fit()
    trainer.close()
    state = read_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert state["global_step"] == 1

    calls["n"] = 0
    assert cli_main(["train", *TINY_ARGS, "--out", str(tmp_path / "cli")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("mlrb train: error: non-finite loss at step 2 (epoch 0): ['D@0', 'M@0']"), err
    assert "lower --lr" in err and "saved in" in err and "--resume auto" in err
