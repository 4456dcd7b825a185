"""Training settings: defaults, a recipe YAML from recipes/ or a path, then flags on top."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hyperclone.errors import UserError
from hyperclone.hub import check_repo_id
from hyperclone.train.data import mixture
from hyperclone.train.schedule import decay_start_step
from hyperclone.yamlio import read_yaml


@dataclass
class TrainConfig:
    model: str = ""
    data: str | list = ""  # a path, or a mixture: ["PATH=WEIGHT", ...] or [{path, weight}, ...]
    decay_data: str | list | None = None  # a second mixture that takes over when the WSD decay starts (MiniCPM)
    out: str | None = None
    max_steps: int = 200
    seq_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    tuned_tokens: int = 0  # the budget `hyperclone tune` found `lr` at (its recipes set it); 0: not tuned
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
    split_seed: int | None = None  # the held-out split's seed (default: seed): runs at other seeds on one eval set
    resume: bool = False
    force: bool = False
    save_every: int = 0  # 0: only the final model
    save_stable: bool = False  # wsd: also write the model where the decay begins (out/stable), the one to grow from
    keep: int = 3
    checkpoint_format: str = "accelerate"  # accelerate | dcp (torch.distributed.checkpoint: sharded, reshards on load)
    async_checkpoint: bool = False  # dcp: write in the background while training goes on
    fsdp: bool = False  # shard the model over the launched processes (FSDP2), each loading only its rows
    reshard_after_forward: bool = True  # fsdp: free each layer's gathered weights after its forward (gather again for backward)
    activation_checkpointing: bool = False  # keep only each decoder layer's input, recompute the rest in backward
    compile: bool = False  # torch.compile each decoder layer (regional compilation): faster steps after a one-time compile
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
    push_to_hub: str | None = None  # a Hub repo org/name: the final model is pushed there, with its card
    # DiLoCo across replica groups (hyperclone.train.diloco): one process per group, torchft between them
    diloco: bool = False
    sync_every: int = 100  # inner steps between outer syncs (H)
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    lighthouse: str | None = None  # torchft lighthouse HOST:PORT
    replica_id: str | None = None  # default: group-<replica_index>
    replica_index: int = 0  # this group's shard of the training data
    replicas: int = 1  # how many shards the training data is cut into
    min_replicas: int = 1  # groups the quorum waits for
    hostname: str = "localhost"  # how the other groups reach this one (its machine's name when they run elsewhere)
    diloco_timeout: float = 60.0  # seconds a quorum or an all-reduce may take
    private: bool = False  # create that repo private

    def as_dict(self) -> dict:
        return asdict(self)

    def warmup_steps(self) -> int:
        return int(self.warmup * self.max_steps) if self.warmup < 1 else int(self.warmup)

    def tokens_per_step(self, processes: int = 1) -> int:
        """Tokens one optimizer step trains on, over `processes` data-parallel processes."""
        return self.batch_size * self.seq_len * self.grad_accum * processes


CHOICES = {
    "optimizer": ("muonclip", "muon", "adamw"),
    "schedule": ("wsd", "cosine", "constant"),
    "decay_shape": ("linear", "cosine", "1-sqrt", "exp"),
    "moe_balance": ("auto", "aux", "aux_free", "none"),
    "expert_lr": ("hunyuan", "none"),
    "mixed_precision": ("no", "bf16", "fp16"),
    "checkpoint_format": ("accelerate", "dcp"),
}


def _recipe(spec: str | os.PathLike) -> dict:
    from importlib import resources

    path = Path(spec)
    if not path.exists():
        path = Path(str(resources.files("hyperclone.recipes") / f"{spec}.yaml"))
        if not path.is_file():
            raise UserError(f"training recipe {spec} is neither a file nor a recipe in recipes/")
    data = read_yaml(path, f"recipe {spec}")
    data = {} if data is None else data
    if isinstance(data, dict) and "distributed_type" in data:
        raise UserError(f"{path} is an Accelerate launch config: use it as "
                        f"`accelerate launch --config_file {path} -m hyperclone.train ...`")
    if not isinstance(data, dict) or data.get("kind", "training") != "training":
        raise UserError(f"recipe {spec} is not a training recipe (kind: training)")
    return {k.replace("-", "_"): v for k, v in data.items() if k not in ("kind", "description")}


def flag(key: str) -> str:
    """The command-line spelling of a setting, as messages should name it (recipes use the key itself)."""
    return "--" + key.replace("_", "-")


# (setting, lowest, highest, whether the lowest is allowed): ranges that make sense, checked with the flag's name
RANGES = (
    ("max_steps", 1, None, True), ("seq_len", 1, None, True), ("batch_size", 1, None, True), ("grad_accum", 1, None, True),
    ("lr", 0, None, False), ("warmup", 0, None, True), ("decay_fraction", 0, 1, True), ("min_lr_ratio", 0, 1, True),
    ("weight_decay", 0, None, True), ("grad_clip", 0, None, True), ("qk_clip_tau", 0, None, False),
    ("save_every", 0, None, True), ("keep", 0, None, True), ("eval_every", 0, None, True), ("eval_fraction", 0, 1, True),
    ("eval_batches", 1, None, True), ("max_bad_steps", 1, None, True), ("sync_every", 1, None, True),
    ("outer_lr", 0, None, False), ("outer_momentum", 0, 1, True), ("replica_index", 0, None, True), ("replicas", 1, None, True),
    ("min_replicas", 1, None, True), ("diloco_timeout", 0, None, False), ("tuned_tokens", 0, None, True),
)


def _check_ranges(config: TrainConfig) -> None:
    for key, low, high, low_ok in RANGES:
        value = getattr(config, key)
        if not math.isfinite(value) or value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f">= {low}" if low_ok else f"> {low}"
            bound += f" and <= {high}" if high is not None else ""
            raise UserError(f"{flag(key)} must be {bound}, got {value}")


def _warn_about_schedule(config: TrainConfig) -> None:
    warmup = config.warmup_steps()
    if warmup > config.max_steps:
        warnings.warn(f"--warmup {config.warmup} is {warmup} steps, longer than the run's {config.max_steps} "
                      "(--max-steps): the learning rate never reaches its peak", UserWarning, stacklevel=3)
    elif config.schedule == "wsd" and warmup + config.decay_fraction * config.max_steps > config.max_steps:
        warnings.warn(f"the warmup ({warmup} steps) and the decay ({config.decay_fraction:.0%} of {config.max_steps}) "
                      "overlap: the run has no stable phase", UserWarning, stacklevel=3)


def _warn_about_tuning(config: TrainConfig) -> None:
    """A tuned learning rate is the best for the budget it was tuned at, and the optimum moves with the
    budget (measured: 4x after growth between a quarter of the budget and all of it), so say when a run
    trains for a budget far from that one. Data-parallel processes share one global batch."""
    if not config.tuned_tokens:
        return
    tokens = config.max_steps * config.tokens_per_step(int(os.environ.get("WORLD_SIZE", "1")))
    if not 0.5 <= tokens / config.tuned_tokens <= 2:
        warnings.warn(f"the learning rate {config.lr:.3g} was tuned for {config.tuned_tokens:,} tokens and this run trains for "
                      f"{tokens:,}: the best rate moves with the budget; run `hyperclone tune --budget-tokens {tokens}` for this "
                      "budget", UserWarning, stacklevel=3)


def _check_checkpoints(config: TrainConfig) -> None:
    if config.async_checkpoint and config.checkpoint_format != "dcp":
        raise UserError("--async-checkpoint writes torch.distributed.checkpoint files: add --checkpoint-format dcp")
    if config.fsdp and (config.save_every or config.resume) and config.checkpoint_format != "dcp":
        raise UserError("--fsdp checkpoints are sharded: use --checkpoint-format dcp (the default with --fsdp)")


def _check_stable(config: TrainConfig) -> None:
    """--save-stable writes the model at the WSD decay's first step: a run must have that step, and under
    DiLoCo it must be an outer sync, or a failed sync could undo what was written."""
    if not config.save_stable:
        return
    if config.schedule != "wsd":
        raise UserError(f"--save-stable writes the model where the WSD decay begins: it needs --schedule wsd, not {config.schedule}")
    if config.decay_from:
        raise UserError("--save-stable with --decay-from: a decay branch begins with its decay, so its stable-phase model "
                        "is the checkpoint it branches from; leave out --save-stable")
    start = decay_start_step(config.max_steps, config.warmup_steps(), config.decay_fraction)
    if start == 0:
        raise UserError("--save-stable: with no warmup and --decay-fraction 1 the decay begins at the first step, so the "
                        "run has no stable phase to save; lower --decay-fraction")
    if config.diloco and start % config.sync_every:
        raise UserError(f"--save-stable: the decay begins at step {start}, between outer syncs (--sync-every "
                        f"{config.sync_every}): choose --max-steps and --decay-fraction so that it falls on a sync")


def _check_diloco(config: TrainConfig) -> None:
    if config.replica_index >= config.replicas:
        raise UserError(f"--replica-index {config.replica_index} must be below --replicas {config.replicas}")
    if config.diloco and not config.lighthouse:
        raise UserError("--diloco needs --lighthouse HOST:PORT (start one with `torchft_lighthouse --min_replicas N`)")
    if config.diloco and config.max_steps % config.sync_every:
        raise UserError(f"--max-steps {config.max_steps} is not a multiple of --sync-every {config.sync_every}: the run would "
                        "end between outer syncs, with a model no other replica group has")
    if config.diloco and config.save_every % config.sync_every:
        raise UserError(f"--save-every {config.save_every} is not a multiple of --sync-every {config.sync_every}: a checkpoint "
                        "between outer syncs would hold inner steps that a failed sync undoes")


def _check_data(config: TrainConfig) -> None:
    """Parse the mixtures now, so a bad weight is named before anything is loaded."""
    seed = config.split_seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"--split-seed must be a whole number, got {seed!r}")
    mixture(config.data, "--data")
    if config.decay_data is None:
        return
    mixture(config.decay_data, "--decay-data")
    if config.schedule != "wsd":
        raise UserError(f"--decay-data takes over when the WSD decay starts: it needs --schedule wsd, not {config.schedule}")


def _env_flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).lower() == "true"


def _from_launcher(given: dict) -> dict:
    """What `accelerate launch --config_file` exported to the environment, for the settings neither a flag
    nor the recipe gave: its mixed precision and, from an FSDP config (recipes/fsdp2.yaml), --fsdp with
    its resharding and activation checkpointing. hyperclone shards with FSDP2 itself (train/sharded.py),
    so a config it cannot honour is refused rather than half followed."""
    found = {}
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision is not None:
        if precision not in CHOICES["mixed_precision"]:
            raise UserError(f"the Accelerate config's mixed_precision {precision!r} is not supported: use "
                            f"{', '.join(CHOICES['mixed_precision'])}")
        found["mixed_precision"] = precision
    if _env_flag("ACCELERATE_USE_FSDP"):
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise UserError("the Accelerate config asks for FSDP version 1: hyperclone shards with FSDP2, set "
                            "fsdp_version: 2 (as recipes/fsdp2.yaml does)")
        if _env_flag("FSDP_OFFLOAD_PARAMS"):
            raise UserError("the Accelerate config asks for fsdp_offload_params, which hyperclone does not support: "
                            "set it to false")
        found.update(fsdp=True, reshard_after_forward=_env_flag("FSDP_RESHARD_AFTER_FORWARD", True),
                     activation_checkpointing=_env_flag("FSDP_ACTIVATION_CHECKPOINTING"))
    return {k: v for k, v in found.items() if k not in given}


def make_config(recipe: str | os.PathLike | None = None, **overrides) -> TrainConfig:
    """Defaults, then the launcher's config (Accelerate's), then the recipe, then every override that is not None."""
    known = {f.name: f for f in fields(TrainConfig)}
    values = _recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("lr") is not None and overrides.get("tuned_tokens") is None:
        values.pop("tuned_tokens", None)  # a learning rate given by hand is not the one the recipe was tuned for
    values.update(_from_launcher(values))
    if values.get("fsdp") and "checkpoint_format" not in values:
        values["checkpoint_format"] = "dcp"  # sharded weights, sharded checkpoints
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown training setting {unknown[0]!r}")
    config = TrainConfig()
    for key, value in values.items():
        default = getattr(config, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{flag(key)} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{flag(key)} must be a number, got {value!r}")
            if isinstance(default, int) and not float(value).is_integer():
                raise UserError(f"{flag(key)} must be a whole number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        setattr(config, key, value)
    for key, options in CHOICES.items():
        if getattr(config, key) not in options:
            raise UserError(f"{flag(key)} must be one of {', '.join(options)}, got {getattr(config, key)!r}")
    _check_ranges(config)
    if not config.model or not config.data:
        raise UserError("training needs --model DIR and --data PATH")
    _check_data(config)
    if config.push_to_hub:
        check_repo_id(config.push_to_hub)
    _check_diloco(config)
    _check_checkpoints(config)
    _check_stable(config)
    _warn_about_schedule(config)
    _warn_about_tuning(config)
    return config
