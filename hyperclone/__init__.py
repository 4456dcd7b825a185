"""hyperclone: grow small pretrained language models into larger ones without changing what they compute."""
from hyperclone.arch import families
from hyperclone.compare import compare
from hyperclone.errors import UserError
from hyperclone.goals import Goal, load_target
from hyperclone.grow import grow, plan
from hyperclone.hub import push
from hyperclone.inspection import inspect_checkpoint as inspect
from hyperclone.loading import load_model
from hyperclone.targets import Target, launch_configs, presets
from hyperclone.train import consolidate, train, tune  # binds the function; `python -m hyperclone.train` still finds the package
from hyperclone.verify import verify

__all__ = ["grow", "plan", "verify", "inspect", "presets", "launch_configs", "families", "load_target", "load_model", "push", "compare", "train", "tune", "consolidate", "Target", "Goal", "UserError"]
