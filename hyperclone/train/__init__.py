"""Continued pretraining: `hyperclone.train(...)`, `hyperclone train`, `accelerate launch -m hyperclone.train`;
`hyperclone.tune(...)` picks its learning rate."""
from hyperclone.train.checkpoint import consolidate
from hyperclone.train.config import TrainConfig, make_config
from hyperclone.train.loop import train
from hyperclone.train.tune import tune

__all__ = ["TrainConfig", "consolidate", "make_config", "train", "tune"]
