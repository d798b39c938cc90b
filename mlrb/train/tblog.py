"""TensorBoard event files beside the JSONL/CSV logs (``mlrb train --tensorboard``).

Written to <run>/tensorboard by rank 0: per period the overall loss, every loss, weight and
contribution (tags "loss/<name>", "weight/<name>", "contribution/<name>"), lambda and the
learning rate, at the global step; per evaluation every metric ("metrics/<key>").
Needs the ``tensorboard`` package (``pip install tensorboard``); without it the trainer
stops at start-up with a message saying so, before any training is done.
"""
from __future__ import annotations

import os


def require_tensorboard() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except (ImportError, ModuleNotFoundError) as exc:
        raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard); "
                         f"it could not be imported: {exc}") from None


class TensorBoardLog:
    def __init__(self, run_dir: str, names):
        from torch.utils.tensorboard import SummaryWriter

        self.names = list(names)
        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

    def period(self, record: dict, lr: float | None) -> None:
        w, step = self.writer, record["step"]
        w.add_scalar("total", record["total"], step)
        for key, tag in (("losses", "loss"), ("weights", "weight"), ("contributions", "contribution")):
            for name, v in zip(self.names, record[key]):
                w.add_scalar(f"{tag}/{name}", v, step)
        if record.get("lambda") is not None:
            w.add_scalar("lambda", record["lambda"], step)
        if lr is not None:
            w.add_scalar("lr", lr, step)
        w.flush()

    def metrics(self, record: dict) -> None:
        step = record.get("step", 0)
        for k, v in record.items():
            if k not in ("epoch", "step") and isinstance(v, (int, float)):
                self.writer.add_scalar(f"metrics/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
