"""Loading a checkpoint with transformers' own classes, strictly: the one reference every check trusts."""
from __future__ import annotations

import os

import torch

from hyperclone.errors import UserError


def load_model(directory: str | os.PathLike, dtype: torch.dtype | None = None, reference: bool = False):
    """Load a checkpoint with transformers' own class, strictly: missing or unexpected keys are an error.

    `reference` picks transformers' eager attention and experts code: the plainest implementation,
    and free of fused-kernel shape limits (grouped_mm wants 16-byte strides, for one).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    options = dict(attn_implementation="eager", experts_implementation="eager") if reference else {}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"transformers cannot load {directory}: {str(exc).splitlines()[0]}") from None
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"{directory} does not load strictly with transformers: {problems}")
    return model


def checkpoint_activations(model: torch.nn.Module) -> None:
    """transformers' own activation checkpointing, one segment per decoder layer, non-reentrant (the
    variant that composes with FSDP2 and needs no input that requires grad)."""
    model.config.use_cache = False  # a cache is for generation; transformers would say so on every forward
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks transformers never splits across devices (its `_no_split_modules`): the
    decoder layers, found by the model class itself rather than by a table of families."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place (regional compilation, as torchtitan does): the layers
    share one compiled graph, so compiling costs about one layer's time, and what runs outside them
    (embedding, loss, the optimizer) stays eager."""
    import shutil

    if not torch.cuda.is_available() and not (os.environ.get("CXX") or any(map(shutil.which, ("g++", "clang++", "c++")))):
        raise UserError("--compile on a CPU needs a C++ compiler (g++ or clang++, or CXX set): install one or leave out --compile")
    for layer in decoder_layers(model):
        layer.compile()
