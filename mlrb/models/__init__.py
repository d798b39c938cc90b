"""The architectures of the papers mlrb reproduces; each reuses the loss space, the
weighting, the metrics and the trainer.

- ``ode``: the ordinary depth estimator of Lee & Kim (ECCV 2020), timm encoder + Fig. S-8 decoder.
- ``relative``: the relative depth estimator (supplement S-3, S-4): shared encoder, 16 decoders.
- ``encoder``: the timm feature encoder and its pretrained-weight rules, shared by all.
- ``amlr``: the AMLR network of Yu & Heo (2023), Swin-v2 encoder + SiLU deconvolution decoder.
- ``dmd`` (with ``mdr`` and ``dmd_losses``): the depth map decomposition network of Jun et al.
  (ECCV 2022), its MDR block, targets and losses.
"""
from mlrb.models.encoder import DEFAULT_MODEL, PRESETS, EncoderInfo, FeatureEncoder, PretrainedWeightsError, create_encoder
from mlrb.models.ode import Decoder, DepthNet, ModelInfo, UpBlock, build_model
from mlrb.models.amlr import AMLRDecoder, AMLRNet, build_amlr_model
from mlrb.models.relative import RelativeDepthNet, build_relative_model
from mlrb.models.dmd import DMDNet, build_dmd

__all__ = [
    "DEFAULT_MODEL", "PRESETS", "EncoderInfo", "PretrainedWeightsError", "create_encoder",
    "Decoder", "DepthNet", "ModelInfo", "UpBlock", "build_model",
    "FeatureEncoder", "AMLRDecoder", "AMLRNet", "build_amlr_model",
    "RelativeDepthNet", "build_relative_model",
    "DMDNet", "build_dmd",
]
