"""The `mlrb` entry point: a user's mistake in any subcommand is one line, never a traceback."""
import pytest

from mlrb import cli
from mlrb.errors import UserError


def _one_line(capsys, prefix, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_run_command_reports_user_errors_file_errors_and_ctrl_c(capsys):
    def user(argv):
        raise UserError("data.csv:3: bad row")

    def missing(argv):
        open("/nonexistent-mlrb-dir/x.json", "w")

    def ctrl_c(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise ZeroDivisionError("a bug: keep the traceback")

    assert cli.run_command("mlrb x", user, []) == 1
    _one_line(capsys, "mlrb x: error: data.csv:3: bad row")
    assert cli.run_command("mlrb x", missing, []) == 1
    _one_line(capsys, "mlrb x: error: /nonexistent-mlrb-dir/x.json: No such file or directory")
    assert cli.run_command("mlrb x", ctrl_c, []) == 130
    _one_line(capsys, "mlrb x: interrupted")
    with pytest.raises(ZeroDivisionError):
        cli.run_command("mlrb x", bug, [])

    def too_large(argv):  # e.g. a --size far beyond the machine's memory
        import torch
        torch.empty(2**62, dtype=torch.uint8)

    def runtime_bug(argv):
        raise RuntimeError("shape mismatch: a bug, keep the traceback")

    assert cli.run_command("mlrb x", too_large, []) == 1
    _one_line(capsys, "mlrb x: error: out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.run_command("mlrb x", runtime_bug, [])

    def closed_pipe(argv):  # `mlrb eval ... | head`
        raise BrokenPipeError(32, "Broken pipe")

    assert cli.run_command("mlrb x", closed_pipe, []) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--batch", "0"], "--batch"),
    (["demo", "--size", "0x0"], "--size"),
    (["demo", "--size", "4x0"], "--size"),
    (["time", "--batch-size", "0"], "--batch-size"),
    (["time", "--iters", "0"], "--iters"),
    (["time", "--device", "nonsense"], "--device"),
    (["time", "--backend", "magic", "--size", "32", "32"], "--backend"),
    (["time", "--json", "/nonexistent-mlrb-dir/t.json"], "--json"),
    (["time", "--json", ".", "--size", "64", "64", "--batch-size", "2", "--n-d", "32", "--iters", "1",
      "--warmup", "0", "--sets", "{D0}", "--no-progress"], "--json"),  # a folder: was found after the timing
    (["bench", "--shape", "1x1x0x4"], "1x1x0x4"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--select", "nonsense"], "--select"),
    (["train", "--batch-size", "0"], "--batch-size"),  # was silently the default 8
    (["train", "--synthetic-train", "0"], "--synthetic-train"),  # was silently 320
    (["train", "--ckpt-every", "-1"], "--ckpt-every"),  # was a checkpoint every step
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--eval-crop", "bogus"], "--eval-crop"),  # was found at the first evaluation
    (["train", "--depth-scale", "abc"], "--depth-scale"),
    (["train", "--device", "nonsense"], "--device"),
    (["train", "--backend", "magic"], "--backend"),  # was found at the first step
    (["train", "--lr-schedule", "poly-updown", "--lr-min", "nan"], "--lr-min"),  # was NaN losses at step 1
    (["train", "--lr-schedule", "poly-updown", "--lr-min", "-1e-4"], "--lr-min"),  # was a negative lr
    (["train", "--lr-schedule", "poly-updown", "--lr-min", "1"], "--lr-min"),  # above --lr
    (["train", "--seed", "99999999999999999999"], "--seed"),  # was "Overflow when unpacking long long"
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--model-kwargs", '{"bogus": 1}'], "--model-kwargs"),  # was timm's TypeError
    (["train", "--batch-size", "1", "--size", "32", "32"], "--batch-size 1 at --size 32 32"),  # was BatchNorm's
    (["demo", "--size", "100000x100000"], "out of memory (DefaultCPUAllocator"),
    (["train", "--weight-decay", "0.1"], "--weight-decay applies to --arch dmd only"),  # was silently ignored
    (["train", "--phase", "1", "--decoders", "gn"], "--decoders, --phase apply to --arch dmd only"),
    (["time", "--batch-size", "1", "--size", "32", "32", "--n-d", "32", "--iters", "1", "--warmup", "0", "--sets",
      "{D0}", "--no-progress"], "--batch-size 1 at --size 32 32"),  # was BatchNorm's words
    (["report", "/nonexistent-mlrb-dir"], "periods.jsonl"),
    (["eval", "/nonexistent-mlrb-dir", "/nonexistent-mlrb-dir", "--dataset", "nyu"], "not a directory"),
])
def test_wrong_arguments_of_every_command_are_one_line(argv, fragment, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run"), "--no-progress"]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own argument errors
        rc = exc.code
    assert rc not in (0, None)
    _one_line(capsys, f"mlrb {argv[0]}: error: ", fragment)
    assert not (tmp_path / "run").exists()  # a refused run leaves no run folder behind


def test_errors_from_data_loader_workers_keep_one_line():
    from mlrb.errors import one_line
    from mlrb.train.datasets import DataFileError

    # torch re-raises a worker's exception with the worker's traceback in the message
    exc = DataFileError("Caught DataFileError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                        "call last):\n  File \"x.py\", line 1, in f\nmlrb.train.datasets.DataFileError: "
                        "cannot read image file a.png: truncated\n")
    assert one_line(exc) == "cannot read image file a.png: truncated"
    assert one_line(UserError("a\nb")) == "a b"
