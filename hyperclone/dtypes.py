"""Dtype names in one place, at the bottom of the import graph.

Three vocabularies meet here: safetensors headers ("BF16"), config.json and targets ("bfloat16"),
and torch. Everything that names a dtype imports from this module, so no table can drift.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from hyperclone.errors import UserError

SAFETENSORS = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SAFETENSORS_NAME = {v: k for k, v in SAFETENSORS.items()}
# the dtypes a grown model may be written in, by their config.json names
DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NAME_BY_DTYPE = {v: k for k, v in DTYPE_BY_NAME.items()}
DTYPE_NAMES = tuple(DTYPE_BY_NAME)


def dominant_dtype(tensors: Iterable) -> torch.dtype:
    """The floating dtype holding most elements: what the source 'is' when no dtype is asked for."""
    counts: dict[torch.dtype, int] = {}
    for info in tensors:
        if info.dtype.is_floating_point:
            counts[info.dtype] = counts.get(info.dtype, 0) + math.prod(info.shape)
    dtype = max(counts, key=counts.get) if counts else torch.float32
    if dtype not in NAME_BY_DTYPE:
        raise UserError(f"source dtype {dtype} is not supported: convert to float32, bfloat16 or float16 (or pass --dtype)")
    return dtype
