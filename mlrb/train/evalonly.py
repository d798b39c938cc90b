"""``mlrb train --eval-only CKPT``: score a trained checkpoint with a run's evaluation protocol.

The configuration (recipe, data, crops, test-time augmentation, ...) comes from the command
line as for training; only the network's weights are read from the checkpoint (a training
checkpoint's "model", or a plain state dict). Nothing is written: the trainer is built in a
temporary folder that is removed afterwards.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable or does not fit the network."""


def evaluate_checkpoint(cfg, path: str, *, recipe_settings=None) -> dict[str, float]:
    """Metrics of the network of ``cfg`` with the weights of ``path`` on ``cfg``'s validation set."""
    import torch

    from mlrb.train.trainer import Trainer

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle / zip errors come in several types
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model state dict")
    if cfg.data != "synthetic" and not cfg.train_list and cfg.val_list:
        cfg = dataclasses.replace(cfg, train_list=cfg.val_list)  # the training set is not used
    with tempfile.TemporaryDirectory(prefix="mlrb-eval-") as tmp:
        cfg = dataclasses.replace(cfg, out_dir=tmp, resume=None, init_depth=None, eval_before=False,
                                  tensorboard=False)
        trainer = Trainer(cfg)
        trainer.recipe_settings = recipe_settings
        try:
            try:
                trainer.model.load_state_dict(weights)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise CheckpointError(f"checkpoint {path} does not fit the network of these options "
                                      f"(--model / --decoder / --n-d / --model-kwargs?): {first}") from None
            return trainer.evaluate()
        finally:
            trainer.close()
