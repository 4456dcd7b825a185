"""Growth targets: presets in recipes/ or a YAML file, validated into one dataclass."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from hyperclone.dtypes import DTYPE_NAMES
from hyperclone.errors import UserError
from hyperclone.moe import parse_moe_target
from hyperclone.ops.split import SHARE_CAP
from hyperclone.yamlio import parse_yaml, read_yaml

# Noise is a standard deviation relative to each row's RMS, capped per weight at SHARE_CAP |w|/n: at width
# 2 the cap binds for almost every weight (all below ~3.5 RMS) from NOISE_CAP on, so more changes little.
# The default is the cap: on the convergence benchmark x2 width paid more the further its copies could start
# apart, up to this cap (benchmarks/results/noise_beyond_cap-*.json); at its smallest size noise 0.5 and 1.5
# ended alike, and exact copies, which stay copies under AdamW, worst (convergence-decay0.2.md, --noises). The
# function is exact at any noise.
NOISE_CAP = SHARE_CAP
DEFAULT_NOISE = NOISE_CAP
KEYS = {"description", "width", "ffn", "layers", "noise", "seed", "depth_init", "insert_after", "dtype", "moe"}
GOAL_MARKERS = ("total_params", "active_params")


@dataclass(frozen=True)
class Target:
    name: str
    width: int = 1
    ffn: int = 1
    layers: int | str | None = None  # a layer count, or "Nx" for N times the source's
    noise: float = DEFAULT_NOISE
    seed: int = 0
    depth_init: str = "copy"  # "copy": neighbour's weights; "fresh": random init (output projections zero either way)
    insert_after: tuple[int, ...] | None = None
    dtype: str | None = None
    moe: dict | None = None  # see hyperclone.moe.MoeTarget
    description: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["insert_after"] = list(self.insert_after) if self.insert_after is not None else None
        return d

    def layer_count(self, source_layers: int) -> int:
        if self.layers is None:
            return source_layers
        if isinstance(self.layers, str):
            count = source_layers * _multiplier(self.layers, "layers")
        else:
            count = self.layers
        if count < source_layers:
            raise UserError(
                f"layers {self.layers} would give {count} layers, fewer than the source's {source_layers}: "
                "hyperclone only adds layers"
            )
        return count


def _multiplier(text: str, key: str) -> int:
    body = text.strip().lower().removesuffix("x")
    try:
        value = int(body)
    except ValueError:
        raise UserError(f"{key}: {text!r} is not a layer count or a multiplier such as '2x'") from None
    if value < 1:
        raise UserError(f"{key}: {text!r} must be at least 1x")
    return value


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key} must be a whole number, got {value!r}")
    if value != int(value):
        lo, hi = math.floor(value), math.ceil(value)
        raise UserError(
            f"{key} {value} is not reachable by function-preserving growth: it must be a whole multiplier "
            f"(nearest reachable: {max(lo, 1)} or {hi})"
        )
    if value < 1:
        raise UserError(f"{key} must be at least 1, got {value}")
    return int(value)


def target_from_dict(data: dict, name: str) -> Target:
    if not isinstance(data, dict):
        raise UserError(f"target {name} must be a YAML mapping of keys such as width, ffn, layers, noise")
    for key in data:
        if key not in KEYS:
            raise UserError(f"target {name}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
    out: dict = {"name": name}
    for key in ("width", "ffn"):
        if key in data:
            out[key] = _positive_int(key, data[key])
    if data.get("layers") is not None:
        layers = data["layers"]
        if isinstance(layers, str):
            _multiplier(layers, "layers")
            out["layers"] = layers
        else:
            out["layers"] = _positive_int("layers", layers)
    if "noise" in data:
        noise = data["noise"]
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0 or not math.isfinite(noise):
            raise UserError(f"noise must be a number >= 0 (0 gives exact copies), got {noise!r}")
        out["noise"] = float(noise)
    if "seed" in data:
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise UserError(f"seed must be an integer, got {data['seed']!r}")
        out["seed"] = data["seed"]
    if "depth_init" in data:
        if data["depth_init"] not in ("copy", "fresh"):
            raise UserError(f"depth_init must be 'copy' or 'fresh', got {data['depth_init']!r}")
        out["depth_init"] = data["depth_init"]
    if data.get("insert_after") is not None:
        positions = data["insert_after"]
        if not isinstance(positions, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise UserError("insert_after must be a list of source layer indices, e.g. [1, 3]")
        out["insert_after"] = tuple(positions)
    if data.get("dtype") is not None:
        if data["dtype"] not in DTYPE_NAMES:
            raise UserError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {data['dtype']!r}")
        out["dtype"] = data["dtype"]
    if data.get("moe") is not None:
        parse_moe_target(data["moe"])
        out["moe"] = dict(data["moe"])
    if "description" in data:
        out["description"] = str(data["description"])
    return Target(**out)


def _preset_dir():
    return resources.files("hyperclone.recipes")


def _shipped() -> Iterator[tuple[str, object, dict]]:
    """(name, file, contents) of every YAML in recipes/: growth presets, training recipes, launch configs."""
    for entry in sorted(_preset_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = parse_yaml(entry.read_text(), f"preset {entry.name}")
            if isinstance(data, dict):
                yield entry.name[: -len(".yaml")], entry, data


def presets() -> dict[str, dict]:
    """Every growth preset shipped in recipes/, by name."""
    return {name: {k: v for k, v in data.items() if k != "kind"} for name, _, data in _shipped()
            if data.get("kind", "growth") == "growth" and "distributed_type" not in data}


def launch_configs() -> dict[str, str]:
    """The Accelerate launch configs shipped in recipes/ (`accelerate launch --config_file PATH`), name -> path."""
    return {name: str(entry) for name, entry, data in _shipped() if "distributed_type" in data}


def named_target(text: str) -> tuple[object, str]:
    """A preset or a YAML file. A preset name wins unless the text is plainly a path (it has a '/' or
    ends in .yaml/.yml), so a file that happens to be called `2x` cannot hijack the preset."""
    path = Path(text).expanduser()
    explicit = "/" in text or os.sep in text or path.suffix in (".yaml", ".yml")
    table = presets()
    if text in table and not explicit:
        if path.exists():
            warnings.warn(f"--to {text}: using the preset {text}, not the {'directory' if path.is_dir() else 'file'} "
                          f"./{text} (write ./{text} to use that)", UserWarning, stacklevel=3)
        return table[text], text
    if not path.exists():
        if explicit:
            raise UserError(f"target file {text} does not exist")
        raise UserError(f"unknown target {text!r}: give a YAML file or one of the presets {', '.join(table)}")
    data = read_yaml(path, f"target file {text}")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "kind"}
    return (data if data is not None else {}), path.stem
