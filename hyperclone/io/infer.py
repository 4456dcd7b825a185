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

from hyperclone.arch import FAMILIES, Role
from hyperclone.errors import UserError
from hyperclone.spec import positive_int

LAYER = re.compile(r"\.layers\.(\d+)\.")


def _marked(fam, names: set[str]) -> bool:
    prefix = fam.layer_prefix + "0."
    return fam.embed + ".weight" in names and all(prefix + m in names for m in fam.detect)


def _fits(fam, names: set[str], shapes: dict) -> bool:
    """Whether every tensor of layer 0 is one of `fam`'s, its markers are there, and its norms have
    their role's length: a per-head norm is shorter than its projection, a whole-projection norm as long."""
    prefix = fam.layer_prefix + "0."
    if not _marked(fam, names):
        return False
    for name in (n for n in names if n.startswith(prefix) and not n.endswith(fam.ignore_suffixes)):
        rule = fam.rule_for(name[len(prefix):].rpartition(".")[0])
        if rule is None:
            return False
        proj = name.replace("_norm.", "_proj.").replace("_layernorm.", "_proj.")
        if rule.role in (Role.HEAD_NORM, Role.PROJ_NORM) and proj != name and proj in shapes:
            if (shapes[name][0] == shapes[proj][0]) != (rule.role is Role.PROJ_NORM):
                return False
    return True


def _detect_family(names: set[str], shapes: dict, path: Path) -> str:
    """The family with the most specific markers among those that fit the tensor names; failing that,
    among those whose markers are there (the planner then names the tensor it does not know)."""
    known = [f for f in FAMILIES.values() if f.detect is not None]
    found = [f for f in known if _fits(f, names, shapes)] or [f for f in known if _marked(f, names)]
    if not found:
        raise UserError(f"{path}: its tensor names match no family hyperclone recognises without a config: "
                        "put the model's config.json next to it, or pass --set model_type=NAME")
    return max(found, key=lambda f: len(f.detect)).model_type


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
    model_type = known.get("model_type") or _detect_family(names, shapes, path)
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
    for module in fam.modules(Role.READ_FFN, Role.GATE_UP_FUSED)[:1]:
        if prefix + module + ".weight" in shapes:
            rows = shapes[prefix + module + ".weight"][0]
            config[fam.ffn_field] = rows // 2 if fam.rule_for(module).role is Role.GATE_UP_FUSED else rows
    q, k = shapes.get(f"{prefix}{fam.q_proj}.weight"), shapes.get(f"{prefix}{fam.k_proj}.weight")
    if fam.head_norm and f"{prefix}{fam.head_norm}.weight" in shapes and q and k:
        head_dim = shapes[f"{prefix}{fam.head_norm}.weight"][0]
        config.update(head_dim=head_dim, num_attention_heads=q[0] // head_dim)
        if fam.kv_heads_field:
            config[fam.kv_heads_field] = k[0] // head_dim
    if f"{prefix}{fam.q_proj}.bias" in shapes:
        config["attention_bias"] = True
    config.update(known)
    if "num_attention_heads" not in config:
        raise UserError(
            f"{path} has no config.json beside it and its tensors do not tell num_attention_heads: "
            "put the model's config.json next to it, pass --config FILE, or pass --set num_attention_heads=N "
            "(and num_key_value_heads=N for grouped-query attention)"
        )
    heads = positive_int(config["num_attention_heads"], "num_attention_heads", str(path))
    if fam.kv_heads_field and fam.kv_heads_field not in config:
        fused = [m for m in fam.modules(Role.QKV_FUSED) if f"{prefix}{m}.weight" in shapes]
        if q and k:
            config[fam.kv_heads_field] = heads * k[0] // q[0]
        elif fused:
            head_dim = positive_int(config.get("head_dim") or hidden // heads, "head_dim", str(path))
            config[fam.kv_heads_field] = (shapes[f"{prefix}{fused[0]}.weight"][0] // head_dim - heads) // 2
    defaulted = ["rope_parameters", "norm eps", "activation", "max_position_embeddings"]
    return config, defaulted
