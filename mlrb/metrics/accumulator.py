"""Streaming metric accumulator: per-key sums and counts, mergeable across processes.

Metrics are per-image values averaged over images (see :mod:`mlrb.metrics.depth`), so the
state is just ``sum`` and ``count`` per key (float64 / int64). Two accumulators merge by
adding states, and :meth:`MetricAccumulator.all_reduce` does the same across a
``torch.distributed`` process group, so a sharded evaluation gives exactly the one-shot
means. Images whose valid set is empty add nothing but are counted in ``skipped``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .depth import Crop, depth_metrics_per_image


class MetricAccumulator:
    """Running per-key means of per-image metric values.

    Example::

        acc = MetricAccumulator()
        for pred, gt in loader:
            acc.update_depth(pred, gt, min_depth=1e-3, max_depth=10.0, crop="nyu_eigen")
        acc.all_reduce()          # no-op unless torch.distributed is initialised
        print(acc.compute())      # {"d1": ..., "abs_rel": ..., ...}
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.skipped: int = 0  # images that contributed to no key (empty valid set)

    # ------------------------------------------------------------------ updates
    def update(self, values: Mapping[str, Tensor | float],
               valid: Tensor | Mapping[str, Tensor] | None = None) -> None:
        """Add per-image values.

        ``values[key]`` is a (B,) tensor (or a scalar for one image). ``valid`` is ``None``
        (all images count), a (B,) bool tensor for all keys, or a per-key mapping of (B,)
        bool tensors. NaN/inf among the *counted* values raise ``ValueError``.
        """
        for key, v in values.items():
            v = torch.as_tensor(v, dtype=torch.float64).reshape(-1).detach().cpu()
            ok = valid.get(key) if isinstance(valid, Mapping) else valid
            ok = (torch.ones_like(v, dtype=torch.bool) if ok is None
                  else torch.as_tensor(ok).reshape(-1).to(device="cpu", dtype=torch.bool))
            if ok.shape != v.shape:
                raise ValueError(f"valid for {key!r} has shape {tuple(ok.shape)}, "
                                 f"values {tuple(v.shape)}")
            v = v[ok]
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"non-finite value for metric {key!r}")
            self.sums[key] = self.sums.get(key, 0.0) + float(v.sum())
            self.counts[key] = self.counts.get(key, 0) + int(v.numel())

    def update_depth(self, pred, gt, *, min_depth: float, max_depth: float,
                     crop: Crop = None, mask=None, nonfinite: str = "clamp") -> None:
        """Compute :func:`~mlrb.metrics.depth_metrics_per_image` and add it."""
        values, n = depth_metrics_per_image(pred, gt, min_depth=min_depth,
                                            max_depth=max_depth, crop=crop, mask=mask,
                                            nonfinite=nonfinite)
        ok = n > 0
        self.skipped += int((~ok).sum())
        self.update(values, ok)

    # ------------------------------------------------------------------ combine
    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Add another accumulator's state into this one (in place); returns self."""
        for key, s in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + s
            self.counts[key] = self.counts.get(key, 0) + other.counts[key]
        self.skipped += other.skipped
        return self

    def all_reduce(self, group=None) -> "MetricAccumulator":
        """Sum the state over a ``torch.distributed`` group (in place); returns self.

        A no-op when torch.distributed is unavailable or not initialised. Ranks may hold
        different key sets (keys are unioned first). Collective: call on every rank.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        key_lists: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(key_lists, sorted(self.sums), group=group)
        keys = sorted(set().union(*key_lists))
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        # One packed float64 tensor: sums, counts, skipped (counts < 2**53 stay exact).
        state = torch.tensor([self.sums.get(k, 0.0) for k in keys]
                             + [float(self.counts.get(k, 0)) for k in keys]
                             + [float(self.skipped)], dtype=torch.float64, device=device)
        dist.all_reduce(state, op=dist.ReduceOp.SUM, group=group)
        state = state.cpu().tolist()
        n = len(keys)
        self.sums = {k: state[i] for i, k in enumerate(keys)}
        self.counts = {k: int(round(state[n + i])) for i, k in enumerate(keys)}
        self.skipped = int(round(state[2 * n]))
        return self

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, float]:
        """Mean per key over the images counted for it (keys never counted are absent)."""
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}

    @property
    def num_images(self) -> int:
        """Largest per-key image count (the number of images evaluated)."""
        return max(self.counts.values(), default=0)

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.skipped = 0

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "skipped": self.skipped}

    def load_state_dict(self, state: Mapping) -> None:
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.skipped = int(state["skipped"])

    def __repr__(self) -> str:
        return (f"MetricAccumulator(keys={sorted(self.sums)}, images={self.num_images}, "
                f"skipped={self.skipped})")
