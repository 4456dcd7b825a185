"""Does a checkpoint's config describe its weights? Asked before anything is grown, inspected, verified or trained.

Why transformers decides: the shapes a config implies are whatever transformers builds from it, so
the model is built from the config on the meta device (no memory, no weights) and each of its
parameters is compared with the tensor of the same name on disk. A mismatch becomes one line naming
the tensor, instead of a bad grown model or transformers' multi-line load report.
"""
from __future__ import annotations

import torch

from hyperclone.arch import family_for
from hyperclone.arch import MOE_LAYOUTS
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint


def meta_model(config: dict, where: str, **options):
    """transformers' causal LM for `config`, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **fields)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config, **options)
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, RuntimeError) as exc:
        raise UserError(f"{where}: transformers cannot build a model from this config ({str(exc).splitlines()[0]}): "
                        "fix the config") from None


def check_config_matches_weights(ckpt: Checkpoint, what: str = "the source") -> None:
    """Refuse (one line) a checkpoint whose config implies other shapes than its tensors have."""
    fam = family_for(ckpt.config.get("model_type"))
    layout = MOE_LAYOUTS.get(fam.model_type)
    where = f"{what} {ckpt.path}"
    model = meta_model(ckpt.config, where)
    for name, tensor in model.state_dict().items():
        disk = fam.disk_names(name, layout.renames if layout else ())
        info = next((ckpt.tensors[d] for d in disk if d in ckpt.tensors), None)
        if info is not None and tuple(info.shape) != tuple(tensor.shape):
            raise UserError(f"{where}: {info.name} has shape {list(info.shape)} on disk but the config implies "
                            f"{list(tensor.shape)}: the config does not match the weights (fix config.json, or pass --config/--set)")
    layers = ckpt.config.get("num_hidden_layers")
    beyond = sorted(n for n in ckpt.tensors if n.startswith(fam.layer_prefix)
                    and (index := n[len(fam.layer_prefix):].partition(".")[0]).isdigit() and int(index) >= layers)
    if beyond:
        raise UserError(f"{where}: tensor {beyond[0]} is beyond num_hidden_layers={layers}: the config does not match the weights")
