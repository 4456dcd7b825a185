"""Liger Kernel on the training hot paths of the families it supports (the family table's `liger`).

Its fused linear cross-entropy computes the loss chunk by chunk and never holds the [tokens, vocab]
logits, which at seq 4096 and a 150 k vocabulary are ~2.5 GB per sequence in float32 alone; its RMSNorm,
SwiGLU and rotary kernels each fuse what transformers runs as several. Liger patches the model in place
(and the family's module globals), so it is applied once, to the model about to train, never to a
model that is being verified.
"""
from __future__ import annotations

import importlib.util

import torch

from hyperclone.arch import FAMILIES
from hyperclone.kernels import kernels_enabled


def liger_applies(model: torch.nn.Module) -> bool:
    """Whether `apply_liger` would patch `model`: kernels on, a CUDA device, Liger installed, the family supported."""
    family = FAMILIES.get(getattr(model.config, "model_type", None))
    return (family is not None and family.liger and kernels_enabled() and torch.cuda.is_available()
            and importlib.util.find_spec("liger_kernel") is not None)


def apply_liger(model: torch.nn.Module, fused_experts: bool) -> str | None:
    """Patch `model` with Liger's kernels for its family; a line saying what was applied, or None when nothing was.

    `fused_experts` lets Liger replace a MoE's routed experts too, where the family's Liger default does
    and every layer has routed experts. On an H100 they ran 1.07x transformers' grouped_mm with 40 % less
    memory (benchmarks/results/kernels-gpu.md), but they multiply float32 tiles as TF32: the loop asks
    for them only when training in bf16/fp16 anyway."""
    if not liger_applies(model):
        return None
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    options = {}
    if FAMILIES[model.config.model_type].moe is not None:
        layers = getattr(getattr(model, model.base_model_prefix, model), "layers", [])
        if not (fused_experts and all(hasattr(layer.mlp, "experts") for layer in layers)):
            options["swiglu"] = False  # the experts stay on transformers' grouped_mm
    _apply_liger_kernel_to_instance(model=model, **options)
    experts = "; routed experts stay on grouped_mm" if options else ""
    return f"Liger kernels on {model.config.model_type}: fused linear cross-entropy where the family allows it, RMSNorm, rotary, SwiGLU{experts}"
