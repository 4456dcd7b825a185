"""Infer a config for a bare .safetensors file from what its tensor names and shapes make certain.

Why so strict: a guessed head count silently changes the function. Shapes give the vocabulary,
widths, depth and tying; head counts come from per-head norms (qwen3) or the file's metadata, and
otherwise the user must say them. Fields that shapes cannot show and that do not change shapes
(rope theta, norm eps, activation) take transformers' defaults for the family; they are listed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from hyperclone.arch import FAMILIES
from hyperclone.errors import UserError
from hyperclone.spec import positive_int

LAYER = re.compile(r"\.layers\.(\d+)\.")


def _detect_family(names: set[str], shapes: dict) -> str:
    if any(n.startswith("gpt_neox.") for n in names):
        return "gpt_neox"
    if any(n.endswith("qkv_proj.weight") for n in names):
        return "phi3"
    if any(n.endswith("pre_feedforward_layernorm.weight") for n in names):
        return "gemma2"
    q_norm = [n for n in names if n.endswith("self_attn.q_norm.weight")]
    if q_norm:
        q_proj = q_norm[0].replace("q_norm", "q_proj")
        if q_proj in shapes and shapes[q_norm[0]][0] == shapes[q_proj][0]:
            return "olmo2"
        return "qwen3"
    if any(n.endswith("self_attn.q_proj.bias") for n in names):
        return "qwen2"
    return "llama"


def _from_metadata(metadata: dict) -> dict:
    """Config fields stored in the safetensors metadata: a JSON 'config' entry or single fields."""
    found: dict = {}
    if "config" in metadata:
        try:
            stored = json.loads(metadata["config"])
        except ValueError:
            stored = None
        if isinstance(stored, dict):
            found.update(stored)
    for key, value in metadata.items():
        if key in ("format", "config"):
            continue
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


def infer_config(shapes: dict[str, tuple], metadata: dict, overrides: dict, path: Path) -> tuple[dict, list[str]]:
    names = set(shapes)
    known = {**_from_metadata(metadata), **overrides}
    model_type = known.get("model_type") or _detect_family(names, shapes)
    if model_type not in FAMILIES:
        raise UserError(f"{path}: model_type {model_type!r} is not supported")
    fam = FAMILIES[model_type]
    embed = fam.embed + ".weight"
    if embed not in shapes:
        raise UserError(f"{path} has no {embed}; it does not look like a {model_type} checkpoint")
    vocab, hidden = shapes[embed]
    layers = 1 + max((int(m.group(1)) for n in names if (m := LAYER.search(n))), default=-1)
    prefix = fam.layer_prefix + "0."
    config = {"model_type": model_type, "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers}
    config["tie_word_embeddings"] = fam.lm_head + ".weight" not in shapes
    for module in ("mlp.gate_proj", "mlp.dense_h_to_4h"):
        if prefix + module + ".weight" in shapes:
            config[fam.ffn_field] = shapes[prefix + module + ".weight"][0]
    if prefix + "mlp.gate_up_proj.weight" in shapes:
        config[fam.ffn_field] = shapes[prefix + "mlp.gate_up_proj.weight"][0] // 2
    if model_type == "qwen3" and prefix + "self_attn.q_norm.weight" in shapes:
        head_dim = shapes[prefix + "self_attn.q_norm.weight"][0]
        config["head_dim"] = head_dim
        config["num_attention_heads"] = shapes[prefix + "self_attn.q_proj.weight"][0] // head_dim
        config["num_key_value_heads"] = shapes[prefix + "self_attn.k_proj.weight"][0] // head_dim
    if prefix + "self_attn.q_proj.bias" in shapes:
        config["attention_bias"] = True
    config.update(known)
    if "num_attention_heads" not in config:
        raise UserError(
            f"{path} has no config.json beside it and its tensors do not tell num_attention_heads: "
            "put the model's config.json next to it, pass --config FILE, or pass --set num_attention_heads=N "
            "(and num_key_value_heads=N for grouped-query attention)"
        )
    heads = positive_int(config["num_attention_heads"], "num_attention_heads", str(path))
    if fam.kv_heads_field and "num_key_value_heads" not in config:
        q = shapes.get(prefix + "self_attn.q_proj.weight")
        k = shapes.get(prefix + "self_attn.k_proj.weight")
        if q and k:
            config["num_key_value_heads"] = heads * k[0] // q[0]
        elif prefix + "self_attn.qkv_proj.weight" in shapes:
            head_dim = positive_int(config.get("head_dim") or hidden // heads, "head_dim", str(path))
            config["num_key_value_heads"] = (shapes[prefix + "self_attn.qkv_proj.weight"][0] // head_dim - heads) // 2
    defaulted = ["rope_parameters", "norm eps", "activation", "max_position_embeddings"]
    return config, defaulted
