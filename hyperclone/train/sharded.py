"""FSDP2 training: the model built on the meta device, sharded with `fully_shard`, and each rank reading
only its own rows of every tensor from the safetensors files, so no process ever holds the whole model.

FSDP2 shards every parameter on dim 0 in chunks of ceil(rows / world) rows (torch.chunk), so rank r's
shard is rows [r * c, (r + 1) * c) of the tensor: the checkpoint reader reads exactly those bytes. A
MoE layer's fused experts are sharded by expert, and each rank assembles only its experts from their
per-expert tensors on disk (the layout transformers converts on load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def fsdp_model(directory: Path, device: torch.device, mixed_precision: str = "no", reshard_after_forward: bool = True,
               before_sharding: Callable[[torch.nn.Module], None] | None = None) -> tuple[torch.nn.Module, str]:
    """transformers' model for `directory`, sharded over every process of the default group; and a line
    saying how much of it this rank holds. `before_sharding` changes the layers first (activation
    checkpointing and compilation go inside each FSDP unit, as torchtitan applies them)."""
    import torch.distributed as dist
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    from hyperclone.loading import decoder_layers

    config = AutoConfig.from_pretrained(str(directory))
    with init_empty_weights(include_buffers=False):  # parameters on meta, computed buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # not done on the meta device; tied before sharding, FSDP2 keeps one parameter
    if before_sharding is not None:
        before_sharding(model)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    # parameters stay float32 (the master weights); under bf16 the forward and backward run in bf16
    # and gradients are reduced in float32: FSDP2's own mixed precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for block in decoder_layers(model):  # each decoder layer is one unit: gathered for its forward, freed after
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    held = _load_shards(model, Path(directory), dist.get_rank(), dist.get_world_size())
    total = sum(p.numel() for p in model.parameters())
    return model, f"FSDP2 over {dist.get_world_size()} processes: each holds about {held:,} of the {total:,} parameters"


def _load_shards(model: torch.nn.Module, directory: Path, rank: int, world: int) -> int:
    """Copy this rank's rows of every parameter from the checkpoint; returns how many values it holds."""
    from hyperclone.arch import MOE_LAYOUTS, family_for
    from hyperclone.errors import UserError
    from hyperclone.io.reader import open_checkpoint
    from hyperclone.moe import expand_fused_experts, fused_from_experts

    ckpt = open_checkpoint(directory, role="model")
    try:
        fam = family_for(ckpt.config["model_type"])
        layout = MOE_LAYOUTS.get(fam.model_type)
        if layout:
            expand_fused_experts(ckpt, layout, fam.layer_prefix)

        def read(name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
            shape = ckpt.tensors[name].shape
            stop = shape[0] if stop is None else stop
            return ckpt.rows(name, start, stop).reshape(stop - start, *shape[1:]).to(torch.float32)

        held = 0
        for name, param in model.named_parameters():  # tied weights come once, under the name on disk
            local = param.to_local()
            start = min(rank * -(-param.shape[0] // world), param.shape[0])
            stop = start + local.shape[0]
            # disk_names applies a MoE layout's renames only inside decoder layers
            disk = next((d for d in fam.disk_names(name, layout.renames if layout else ()) if d in ckpt.tensors), None)
            layer, _, rel = name.removeprefix(fam.layer_prefix).partition(".")
            if disk is not None:
                value = read(disk, start, stop)
            elif layout and name.startswith(fam.layer_prefix) and rel.startswith(layout.memory_experts + "."):
                value = fused_from_experts(ckpt, layout, fam.layer_prefix, int(layer), rel, list(range(start, stop)), read)
            else:
                raise UserError(f"{directory} has no tensor for {name}: the checkpoint is incomplete")
            with torch.no_grad():
                local.copy_(value.reshape(local.shape))
            held += local.numel()
    finally:
        ckpt.close()
    return held
