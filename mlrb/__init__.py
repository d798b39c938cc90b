"""mlrb: the multi-scale loss space of Lee & Kim (ECCV 2020) as fused kernels, with
loss rebalancing, depth metrics and a thin training driver."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from mlrb.names import (
    AMLR_NAMES,
    LOSS_NAMES,
    LOSS_TYPES,
    SETS,
    TABLE5_SETS,
    TRAINER_LOSS_NAMES,
    resolve_select,
)

__version__ = "0.1.0"


def _map_kernels_package() -> None:
    # Installs map the top-level kernels/ folder to mlrb.kernels; a plain source checkout
    # (repo root on sys.path) has no such mapping, so register it here.
    if importlib.util.find_spec("mlrb.kernels") is not None:
        return
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(path, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location("mlrb.kernels", init, submodule_search_locations=[path])
        module = importlib.util.module_from_spec(spec)
        sys.modules["mlrb.kernels"] = module
        spec.loader.exec_module(module)


_map_kernels_package()

# Heavier pieces load on first use so `import mlrb` stays cheap.
_LAZY = {
    "fused_loss_space": "mlrb.loss_space",
    "LossSpace": "mlrb.loss_space",
    "available_backends": "mlrb.loss_space",
    "MultiLossRebalancer": "mlrb.weighting",
    "AMLRRebalancer": "mlrb.weighting",
    "UncertaintyWeighting": "mlrb.weighting",
    "FixedWeights": "mlrb.weighting",
    "paper_lambda_schedule": "mlrb.weighting",
}
_SUBMODULES = ("reference", "compat", "metrics", "weighting", "train", "kernels", "ops")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"mlrb.{name}")
    raise AttributeError(f"module 'mlrb' has no attribute {name!r}")


__all__ = [
    "LOSS_NAMES", "TRAINER_LOSS_NAMES", "LOSS_TYPES", "AMLR_NAMES", "SETS", "TABLE5_SETS",
    "resolve_select", *_LAZY,
]
