"""A timm backbone as a feature encoder, shared by every architecture in mlrb.models.

Pretrained encoder weights are only ever read from disk: a checkpoint file given by the
user, or timm's / Hugging Face's local cache. Nothing is downloaded.

Every backbone family gives the decoders (B, C, H, W) feature maps: timm's transformer
encoders (Swin, Swin-v2, ...) return channels-last (B, H, W, C) maps; ``FeatureEncoder``
reads the layout from timm's ``output_fmt`` and checks it against the channel count of every
map it returns. Encoders built for one input size (Swin windows, ViT position embeddings;
timm's ``strict_img_size``) are created for the size the user trains at (``input_size``);
smaller inputs are padded (replicate) up to it and the features cropped back, larger ones
raise a ValueError that says how to build the encoder for them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlrb.errors import UserError

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


class PretrainedWeightsError(UserError, RuntimeError):
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
    layout: str = "NCHW"        # of timm's raw feature maps ("NHWC": converted by FeatureEncoder)
    input_size: tuple[int, int] | None = None  # the fixed input size the encoder needs, if any


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a timm model insists on (a patch embedding with ``strict_img_size``), or None."""
    for m in model.modules():
        if getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_size", False) \
                and getattr(m, "img_size", None) is not None:
            size = m.img_size
            return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return None


def _layout_of(model: nn.Module) -> str:
    fmt = getattr(model, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper()


class FeatureEncoder(nn.Module):
    """A timm ``features_only`` model whose outputs are always (B, C, H, W).

    ``forward(x)`` returns the list of feature maps of ``info.channels``. Channels-last maps
    are permuted; for encoders with a fixed input size (``info.input_size``) smaller inputs
    are padded to it and the maps cropped to the input's extent (ceil(H / reduction)).
    Attributes not found here (``feature_info``, ...) are those of the timm model.
    """

    def __init__(self, model: nn.Module, info: "EncoderInfo"):
        super().__init__()
        self.model = model
        self.info = info
        # Checkpoints of the unwrapped timm model (keys without "model.") still load.
        self._register_load_state_dict_pre_hook(_add_model_prefix)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")  # absent while unpickling / deep-copying
            if modules is None or "model" not in modules or name.startswith("__"):
                raise
            return getattr(modules["model"], name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"encoder input must be (B, C, H, W); got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        fixed = self.info.input_size
        if fixed is not None and (h, w) != fixed:
            if h > fixed[0] or w > fixed[1]:
                raise ValueError(
                    f"encoder {self.info.timm_name!r} has a fixed input size {fixed[0]}x{fixed[1]} (it was built "
                    f"for it) and cannot take a {h}x{w} input; build it for the size you use "
                    f"(create_encoder(..., input_size=({h}, {w})), mlrb train --size {h} {w})")
            x = F.pad(x, (0, fixed[1] - w, 0, fixed[0] - h), mode="replicate")
        feats = self.model(x)
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        out = []
        for f, c, r in zip(feats, self.info.channels, self.info.reductions):
            f = _to_nchw(f, c, self.info.layout, self.info.timm_name)
            if fixed is not None and (h, w) != fixed:
                f = f[..., :math.ceil(h / r), :math.ceil(w / r)]
            out.append(f)
        return out


def _to_nchw(f: torch.Tensor, channels: int, layout: str, name: str) -> torch.Tensor:
    if f.dim() != 4:
        raise RuntimeError(f"encoder {name!r} returned a feature map of shape {tuple(f.shape)}; expected 4-d")
    first, last = f.shape[1] == channels, f.shape[-1] == channels
    if last and (layout == "NHWC" or not first):
        return f.permute(0, 3, 1, 2).contiguous()
    if first:
        return f
    raise RuntimeError(f"encoder {name!r} returned a feature map of shape {tuple(f.shape)}; "
                       f"expected {channels} channels first or last")


def _add_model_prefix(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "model.")]:
        state_dict[prefix + "model." + key[len(prefix):]] = state_dict.pop(key)


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


def check_batch_norm_batch(model: nn.Module, reduction: int, batch: int, size: tuple[int, int]) -> None:
    """ValueError naming --batch-size and --size if training ``model`` on batches of ``batch``
    inputs of ``size`` leaves one value per channel in its deepest (1/reduction) feature map,
    which BatchNorm cannot normalise in training (torch raises at the first step)."""
    h, w = (-(-int(s) // int(reduction)) for s in size)  # (padded convolutions round up)
    if batch * h * w == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"--batch-size 1 at --size {size[0]} {size[1]} leaves one value per channel in the "
                         f"encoder's 1/{reduction} feature map, which its BatchNorm cannot train on; use "
                         f"--batch-size 2 or more, or a --size with a side above {reduction}")


def create_encoder(name: str = DEFAULT_MODEL, *, pretrained: str | None = None, random_if_missing: bool = False,
                   out_indices: tuple[int, ...] = (-1,), input_size: tuple[int, int] | None = None,
                   model_kwargs: dict | None = None, with_head: bool = False) -> tuple[FeatureEncoder, EncoderInfo]:
    """A timm ``features_only`` encoder for ``name`` (a preset or any timm model name).

    pretrained:
      None        random initialisation;
      "cache"     timm's default ImageNet weights, only if already in the local cache;
      a path      a checkpoint file (state dict of the full timm classifier, .pth or
                  .safetensors) loaded through timm, classifier weights dropped.
    If the weights are not available locally a PretrainedWeightsError explains how to get
    them, unless ``random_if_missing`` (then a warning and random initialisation).
    The encoder returns a list with one (B, C, H, W) feature map per entry of ``out_indices``.
    input_size: the (H, W) the encoder will see; encoders that need a fixed input size
      (Swin, ViT) are built for it (timm's ``img_size``). Ignored by CNNs.
    model_kwargs: extra keyword arguments of the timm model (e.g. a smaller ``embed_dim``).
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
    kwargs.update(model_kwargs or {})

    def create(**extra):
        try:
            return timm.create_model(timm_name, **kwargs, **extra)
        except TypeError as exc:  # an argument the model does not take: one the user added
            if not model_kwargs:
                raise
            raise ValueError(f"model_kwargs (--model-kwargs) {json.dumps(model_kwargs)} do not fit {timm_name!r}: "
                             f"{exc}") from None
        except Exception as exc:  # torch.load / safetensors / state-dict mismatches raise various types
            if source == "random":
                raise
            raise PretrainedWeightsError(f"could not load pretrained weights {source!r} into {timm_name!r}: {exc}") from exc

    encoder = create()
    fixed = _fixed_input_size(encoder)
    if fixed is not None and input_size is not None and tuple(input_size) != fixed and "img_size" not in kwargs:
        size = (int(input_size[0]), int(input_size[1]))
        try:
            encoder = create(img_size=size)
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise ValueError(f"encoder {timm_name!r} needs a fixed input size and cannot be built for {size[0]}x"
                             f"{size[1]}: {exc}; choose a size its patches / windows divide") from exc
        fixed = _fixed_input_size(encoder)
    if source != "random":
        _check_weights_landed(encoder, source, timm_name)
    if with_head:
        encoder = HeadFeatures(encoder, out_indices)
    fi = encoder.feature_info
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    info = EncoderInfo(name=name, timm_name=timm_name, channels=tuple(fi.channels()), reductions=tuple(fi.reduction()),
                       mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                       pretrained=source, layout=_layout_of(encoder), input_size=fixed)
    return FeatureEncoder(encoder, info), info


def _check_weights_landed(encoder: nn.Module, path: str, timm_name: str) -> None:
    """PretrainedWeightsError unless most of the encoder's weights came from ``path``.

    timm loads a features_only model's weights with strict=False (the classifier is
    dropped), so a file of another model, or of no model, loads nothing without a word
    and training silently starts from random weights. The check compares values, not
    names (timm renames and unwraps keys): each conv / linear weight of the encoder must
    equal a tensor of the file.
    """
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a format timm read but this check cannot: leave it to timm
        return
    by_shape: dict[tuple, list[torch.Tensor]] = {}

    def collect(obj):
        if isinstance(obj, torch.Tensor):
            by_shape.setdefault(tuple(obj.shape), []).append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)

    collect(state)
    mine = [t for t in encoder.state_dict().values() if t.ndim >= 2]
    found = sum(any(torch.equal(t, f.to(t.dtype)) for f in by_shape.get(tuple(t.shape), ())) for t in mine)
    if mine and found < len(mine) / 2:
        raise PretrainedWeightsError(
            f"pretrained weights {path!r}: only {found} of the {len(mine)} conv/linear weights of {timm_name!r} "
            f"are in the file; is it the state dict of a {timm_name} classifier? (timm would have started "
            f"from random weights without a word)")


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
