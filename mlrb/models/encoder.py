"""A timm backbone as a feature encoder, shared by every architecture in mlrb.models.

Pretrained encoder weights are only ever read from disk: a checkpoint file given by the
user, or timm's / Hugging Face's local cache. Nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

# Backbones of the paper (DenseNet161, PNASNet-5 Large; EfficientNet-B5 as a modern
# equivalent) with their batch sizes, and the small default that trains on a CPU.
PRESETS: dict[str, dict] = {
    "densenet161": {"timm_name": "densenet161", "batch_size": 12},
    "pnasnet5large": {"timm_name": "pnasnet5large", "batch_size": 8},
    "efficientnet_b5": {"timm_name": "efficientnet_b5", "batch_size": 8},
    "resnet18": {"timm_name": "resnet18", "batch_size": 8},
}
DEFAULT_MODEL = "resnet18"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were requested but are not available locally."""


@dataclass
class EncoderInfo:
    """What an architecture needs to know of its encoder."""

    name: str                   # as the user gave it (preset or timm name)
    timm_name: str
    channels: tuple[int, ...]   # per returned feature map, shallow to deep
    reductions: tuple[int, ...]  # stride of each returned feature map
    mean: tuple[float, ...]     # the input normalisation the weights expect
    std: tuple[float, ...]
    pretrained: str             # "random" or the weights file


def _cached_weights_file(timm_name: str) -> str | None:
    """The local file of timm's default pretrained weights for ``timm_name``, or None.

    Looks in the Hugging Face hub cache (models hosted there) and torch hub's checkpoint
    folder (models with a URL); never touches the network.
    """
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hub_id.partition("@")
            for fname in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if not fname:
                    continue
                path = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(path, str) and os.path.isfile(path):
                    return path
    url = cfg.get("url")
    if url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))
        if os.path.isfile(path):
            return path
    del timm
    return None


def create_encoder(name: str = DEFAULT_MODEL, *, pretrained: str | None = None, random_if_missing: bool = False,
                   out_indices: tuple[int, ...] = (-1,), with_head: bool = False) -> tuple[nn.Module, EncoderInfo]:
    """A timm ``features_only`` encoder for ``name`` (a preset or any timm model name).

    pretrained:
      None        random initialisation;
      "cache"     timm's default ImageNet weights, only if already in the local cache;
      a path      a checkpoint file (state dict of the full timm classifier, .pth or
                  .safetensors) loaded through timm, classifier weights dropped.
    If the weights are not available locally a PretrainedWeightsError explains how to get
    them, unless ``random_if_missing`` (then a warning and random initialisation).
    The encoder returns a list with one feature map per entry of ``out_indices``.
    ``with_head``: one more map at the end, the backbone's final features before pooling
    (EfficientNet: its conv_head + BN + SiLU, 2048 channels for B5), which timm's
    ``features_only`` leaves out; see :class:`HeadFeatures`.
    """
    import timm

    preset = PRESETS.get(name, {})
    timm_name = preset.get("timm_name", name)
    if not timm.is_model(timm_name):
        raise ValueError(f"unknown encoder {name!r}: not a preset ({', '.join(PRESETS)}) nor a timm model name")
    kwargs: dict = {"num_classes": 0} if with_head else {"features_only": True, "out_indices": tuple(out_indices)}
    source = "random"
    if pretrained is not None:
        path = _cached_weights_file(timm_name) if pretrained == "cache" else os.path.expanduser(pretrained)
        if path is None or not os.path.isfile(path):
            where = "in the local timm / Hugging Face cache" if pretrained == "cache" else f"at {pretrained!r}"
            msg = (f"pretrained weights for {timm_name!r} not found {where}; mlrb never downloads. "
                   f"Fetch them once on a machine with network access (e.g. "
                   f"timm.create_model({timm_name!r}, pretrained=True) fills the cache, or save its "
                   f"state_dict() to a file) and pass --pretrained PATH, or train from random "
                   f"initialisation (--pretrained none / --random-if-missing).")
            if not random_if_missing:
                raise PretrainedWeightsError(msg)
            import warnings
            warnings.warn(msg + " Using random initialisation.", RuntimeWarning, stacklevel=3)
        else:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": path})
            source = path
    try:
        encoder = timm.create_model(timm_name, **kwargs)
    except Exception as exc:  # torch.load / safetensors / state-dict mismatches raise various types
        if source == "random":
            raise
        raise PretrainedWeightsError(f"could not load pretrained weights {source!r} into {timm_name!r}: {exc}") from exc
    if with_head:
        encoder = HeadFeatures(encoder, out_indices)
    fi = encoder.feature_info
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    info = EncoderInfo(name=name, timm_name=timm_name, channels=tuple(fi.channels()), reductions=tuple(fi.reduction()),
                       mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                       pretrained=source)
    return encoder, info


class _FeatureList:
    """channels() / reduction() of HeadFeatures, like timm's FeatureInfo."""

    def __init__(self, channels: list[int], reductions: list[int]):
        self._c, self._r = channels, reductions

    def channels(self) -> list[int]:
        return list(self._c)

    def reduction(self) -> list[int]:
        return list(self._r)


class HeadFeatures(nn.Module):
    """A full timm model (classifier removed) returning its ``out_indices`` feature maps
    and, last, its final pre-pooling features (``forward_intermediates``)."""

    def __init__(self, model: nn.Module, out_indices: tuple[int, ...]):
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no forward_intermediates; with_head needs it")
        self.model = model
        info = model.feature_info
        n = len(info)
        idx = [int(i) % n for i in out_indices]
        self.out_indices = idx
        self.feature_info = _FeatureList([info[i]["num_chs"] for i in idx] + [int(model.num_features)],
                                         [info[i]["reduction"] for i in idx] + [info[-1]["reduction"]])
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        final, maps = self.model.forward_intermediates(x, indices=self.out_indices)
        return list(maps) + [final]
