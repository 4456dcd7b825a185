"""Architecture-neutral description of a dense decoder, read from and written back to config.json."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from hyperclone.arch import Family, family_for
from hyperclone.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    family: str
    vocab: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    tied: bool

    @property
    def adapter(self) -> Family:
        return family_for(self.family)

    def as_dict(self) -> dict:
        return asdict(self)


def positive_int(value, key: str, where: str) -> int:
    """A size field must be a whole number >= 1: anything else would break the shapes (or divide by zero)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
    return value


def _need(config: dict, key: str, where: str) -> int:
    value = config.get(key)
    if value is None:
        raise UserError(f"{where} has no {key!r}: add it to config.json or pass --set {key}=VALUE")
    return positive_int(value, key, where)


def spec_from_config(config: dict, where: str = "config.json") -> ModelSpec:
    """Read the growth-relevant shape of a model from its config dict."""
    fam = family_for(config.get("model_type"))
    hidden = _need(config, "hidden_size", where)
    heads = _need(config, "num_attention_heads", where)
    kv = config.get(fam.kv_heads_field) if fam.kv_heads_field else None
    kv = heads if kv is None else positive_int(kv, fam.kv_heads_field, where)
    head_dim = positive_int(config.get("head_dim") or hidden // heads, "head_dim", where)
    if heads % kv:
        raise UserError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    tied = bool(config.get("tie_word_embeddings", fam.tied_default))
    return ModelSpec(
        family=fam.model_type,
        vocab=_need(config, "vocab_size", where),
        hidden=hidden,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        intermediate=_need(config, fam.ffn_field, where),
        layers=_need(config, "num_hidden_layers", where),
        tied=tied,
    )


def config_for(source_config: dict, src: ModelSpec, dst: ModelSpec, layer_map: list[int], dtype_name: str) -> dict:
    """The target's config.json: the source's, with the grown sizes and per-layer lists remapped."""
    fam = src.adapter
    cfg = copy.deepcopy(source_config)
    cfg["hidden_size"] = dst.hidden
    for key in fam.hidden_fields:
        cfg[key] = dst.hidden
    cfg["num_attention_heads"] = dst.heads
    if fam.kv_heads_field:
        cfg[fam.kv_heads_field] = dst.kv_heads
    cfg[fam.ffn_field] = dst.intermediate
    cfg["num_hidden_layers"] = dst.layers
    if cfg.get("head_dim") is not None or src.head_dim != src.hidden // src.heads:
        cfg["head_dim"] = dst.head_dim
    for key in fam.layer_lists:  # per-layer lists (attention types, layers without rotary): each new layer its source's
        if isinstance(cfg.get(key), list) and len(cfg[key]) == src.layers:
            cfg[key] = [source_config[key][i] for i in layer_map]
    if isinstance(cfg.get("max_window_layers"), int):
        # qwen2/qwen3: layers below max_window_layers differ from those above; keep each new layer on its source's side.
        cfg["max_window_layers"] = sum(1 for i in layer_map if i < source_config["max_window_layers"])
    cfg["tie_word_embeddings"] = dst.tied
    cfg["dtype"] = dtype_name
    cfg.pop("torch_dtype", None)
    return cfg
