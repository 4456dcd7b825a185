"""Continued pretraining: `hyperclone.train(...)`, `hyperclone train`, `accelerate launch -m hyperclone.train`."""
from hyperclone.train.config import TrainConfig, make_config
from hyperclone.train.loop import train

__all__ = ["TrainConfig", "make_config", "train"]
