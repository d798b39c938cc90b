"""Drop-in glue for the training frameworks depth researchers already use.

Each submodule needs its framework, installed through an extra of mlrb, and says so in one
line when it is missing:

- :mod:`mlrb.integrations.lightning`: ``LossSpaceMixin`` for a ``LightningModule``
  (``pip install mlrb[lightning]``);
- :mod:`mlrb.integrations.hf`: ``RebalancingTrainer``, a transformers ``Trainer`` whose
  ``compute_loss`` is the loss space plus a weighter, and ``predicted_depth`` for plain
  loops (``pip install mlrb[hf]``);
- :mod:`mlrb.integrations.torchmetrics`: ``mlrb.metrics`` as ``torchmetrics.Metric``
  classes (``pip install mlrb[torchmetrics]``).

Nothing is imported here, so ``import mlrb.integrations`` never needs an extra.
"""
from __future__ import annotations

import importlib


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise one ImportError line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the {module!r} package, which is not installed: pip install mlrb[{extra}]"
        ) from exc
