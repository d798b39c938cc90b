"""Learning-rate schedules stepped every batch.

- ``constant``: the trainer's Adam lr throughout (Lee & Kim 2020, Sec. 4.1: lr 1e-4).
- ``poly-updown``: AMLR (Yu & Heo 2023, Sec. IV-A) "adopted the learning rate schedule
  proposed by Xie et al. [6] ... gradually increased until the midpoint of the entire
  epoch and then reverted to its initial value, with an initial learning rate of 3e-5 and
  a midpoint learning rate of 5e-4 ... updated after every single batch". Xie et al.'s
  public trainer (inherited from GLPDepth) uses a polynomial of power 0.9, not a linear or
  cosine ramp: with u = step / (half of the run's steps),
      lr = lr_min + (lr_max - lr_min) * u^0.9              for u < 1,
      lr = max(lr_min, lr_max + (lr_min - lr_max) * (u - 1)^0.9)   after.
  The half point is the middle of the run in steps (their code: epochs // 2 whole epochs;
  the same for the papers' even epoch counts).
"""
from __future__ import annotations

SCHEDULES = ("constant", "poly-updown")
POWER = 0.9


def lr_at(schedule: str, step: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """The learning rate of (0-based) batch ``step`` of a run of ``total_steps`` batches."""
    if schedule == "constant":
        return lr_max
    if schedule != "poly-updown":
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {schedule!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    half = max(total_steps / 2, 1.0)
    u = (step + 1) / half  # their global_step counts from 1
    if u < 1:
        return lr_min + (lr_max - lr_min) * u ** POWER
    return max(lr_min, lr_max + (lr_min - lr_max) * min(u - 1, 1.0) ** POWER)
