"""Training settings: defaults, a recipe YAML from recipes/ or a path, then flags on top."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from hyperclone.errors import UserError


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    out: str | None = None
    max_steps: int = 200
    seq_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    optimizer: str = "muonclip"  # muonclip | muon | adamw
    schedule: str = "wsd"  # wsd | cosine | constant
    warmup: float = 0.05  # a fraction of max_steps (< 1) or a step count
    decay_fraction: float = 0.2
    decay_shape: str = "linear"  # linear | cosine | 1-sqrt | exp
    min_lr_ratio: float = 0.0
    decay_from: str | None = None  # a stable-phase checkpoint to branch a decay run from
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    qk_clip_tau: float = 100.0
    seed: int = 0
    resume: bool = False
    force: bool = False
    save_every: int = 0  # 0: only the final model
    keep: int = 3
    eval_every: int = 0  # 0: only at the end
    eval_fraction: float = 0.05
    eval_batches: int = 8
    eval_at_start: bool = False  # an eval point at step 0: where a grown model starts
    text_field: str = "text"
    streaming: bool = False
    moe_balance: str = "auto"  # auto | aux | aux_free | none
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    bias_update_rate: float = 0.001
    expert_lr: str = "hunyuan"  # hunyuan (sqrt(top_k / experts)) | none
    max_bad_steps: int = 10
    mixed_precision: str = "no"  # no | bf16 | fp16
    trackers: str = "tensorboard"  # tensorboard | none | any Accelerate tracker name
    progress: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


CHOICES = {
    "optimizer": ("muonclip", "muon", "adamw"),
    "schedule": ("wsd", "cosine", "constant"),
    "decay_shape": ("linear", "cosine", "1-sqrt", "exp"),
    "moe_balance": ("auto", "aux", "aux_free", "none"),
    "expert_lr": ("hunyuan", "none"),
    "mixed_precision": ("no", "bf16", "fp16"),
}


def _recipe(spec: str | os.PathLike) -> dict:
    from importlib import resources

    path = Path(spec)
    if not path.exists():
        packaged = resources.files("hyperclone.recipes") / f"{spec}.yaml"
        if not packaged.is_file():
            raise UserError(f"training recipe {spec} is neither a file nor a recipe in recipes/")
        text = packaged.read_text()
    else:
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {spec} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("kind", "training") != "training":
        raise UserError(f"recipe {spec} is not a training recipe (kind: training)")
    return {k.replace("-", "_"): v for k, v in data.items() if k not in ("kind", "description")}


def make_config(recipe: str | os.PathLike | None = None, **overrides) -> TrainConfig:
    """Defaults, then the recipe, then every override that is not None."""
    known = {f.name: f for f in fields(TrainConfig)}
    values = _recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown training setting {unknown[0]!r}")
    config = TrainConfig()
    for key, value in values.items():
        default = getattr(config, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{key} must be a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        setattr(config, key, value)
    for key, options in CHOICES.items():
        if getattr(config, key) not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got {getattr(config, key)!r}")
    for key in ("max_steps", "seq_len", "batch_size", "grad_accum"):
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1")
    if not config.lr > 0:
        raise UserError("lr must be positive")
    if not config.model or not config.data:
        raise UserError("training needs --model DIR and --data PATH")
    return config
