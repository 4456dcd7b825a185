"""hyperclone: grow small pretrained language models into larger ones without changing what they compute.

The API is imported on first use: `hyperclone --help`, or a command refused for its arguments, should not
first pay about 2 s for torch, transformers and accelerate, and a notebook that only plans a growth
should not import the trainer."""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from hyperclone.arch import families
    from hyperclone.compare import compare
    from hyperclone.errors import UserError
    from hyperclone.goals import Goal, load_target
    from hyperclone.grow import grow, plan
    from hyperclone.hub import push
    from hyperclone.inspection import inspect_checkpoint as inspect
    from hyperclone.loading import load_model
    from hyperclone.targets import Target, launch_configs, presets
    from hyperclone.train import consolidate, train, tune
    from hyperclone.verify import verify

# public name -> (module, attribute in it)
_API = {
    "families": ("hyperclone.arch", "families"), "compare": ("hyperclone.compare", "compare"),
    "UserError": ("hyperclone.errors", "UserError"), "Goal": ("hyperclone.goals", "Goal"),
    "load_target": ("hyperclone.goals", "load_target"), "grow": ("hyperclone.grow", "grow"), "plan": ("hyperclone.grow", "plan"),
    "push": ("hyperclone.hub", "push"), "inspect": ("hyperclone.inspection", "inspect_checkpoint"),
    "load_model": ("hyperclone.loading", "load_model"), "Target": ("hyperclone.targets", "Target"),
    "launch_configs": ("hyperclone.targets", "launch_configs"), "presets": ("hyperclone.targets", "presets"),
    "consolidate": ("hyperclone.train", "consolidate"), "train": ("hyperclone.train", "train"), "tune": ("hyperclone.train", "tune"),
    "verify": ("hyperclone.verify", "verify"),
}

__all__ = ["grow", "plan", "verify", "inspect", "presets", "launch_configs", "families", "load_target", "load_model", "push", "compare", "train", "tune", "consolidate", "Target", "Goal", "UserError"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hyperclone' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # bound once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package: hyperclone.grow, .plan, .verify, .compare and .train
    are modules too, and without this the first import of one would put the module where the function
    of the same name belongs (`hyperclone.train(...)` would call a module). `python -m hyperclone.train`
    and `from hyperclone.grow import ...` find modules through sys.modules and are not affected."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in _API and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
