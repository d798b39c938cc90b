"""A thin training driver: timm encoder + the decoder of Lee & Kim (Fig. S-8), trained with
the fused loss space and loss rebalancing (``mlrb train``, ``mlrb time``, ``mlrb report``)."""
from mlrb.train.datasets import Augment, AugmentedDataset, BTSSplit, DataFileError, NYUv2CSV
from mlrb.models import PRESETS, DepthNet, PretrainedWeightsError, build_model
from mlrb.train.checkpoint import CheckpointError
from mlrb.train.interrupt import TrainingInterrupted
from mlrb.train.runfolder import RunFolderError
from mlrb.train.synthetic import SyntheticDepth
from mlrb.train.trainer import TrainConfig, Trainer

__all__ = [
    "Augment", "AugmentedDataset", "BTSSplit", "DataFileError", "NYUv2CSV", "PRESETS", "DepthNet",
    "PretrainedWeightsError", "build_model", "SyntheticDepth", "TrainConfig", "Trainer",
    "CheckpointError", "RunFolderError", "TrainingInterrupted",
]
