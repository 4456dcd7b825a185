"""Launching the Triton kernels of attention_triton.py: fixed tiles for the interpreter tests, the
autotuner's on a GPU. Triton itself is imported only when a kernel is launched."""
from __future__ import annotations

import torch


def launch(name: str, rows: int, programs: int, args: tuple, flags: dict, blocks: tuple[int, int] | None) -> None:
    """Fixed tiles where `blocks` says (the interpreter tests use small ones), else the autotuner's.
    `rows` is the length the grid's first axis tiles: queries, or keys for dK/dV."""
    import triton

    from hyperclone.kernels.attention_triton import KERNELS

    fixed, tuned = KERNELS[name]
    along = "BLOCK_K" if name == "dkdv" else "BLOCK_Q"
    if blocks is None:
        tuned[lambda meta: (triton.cdiv(rows, meta[along]), programs)](*args, **flags)
    else:
        block_q, block_k = blocks
        fixed[(triton.cdiv(rows, block_k if name == "dkdv" else block_q), programs)](*args, BLOCK_Q=block_q, BLOCK_K=block_k, **flags)


def launch_flags(query: torch.Tensor, window: int | None) -> dict:
    import triton

    return dict(BLOCK_D=max(16, triton.next_power_of_2(query.shape[-1])), WINDOW=bool(window), UPCAST=not query.is_cuda)


def row_strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    """Batch, head and row strides of [B, H, L, D] tensors whose last dimension is contiguous."""
    return tuple(s for t in tensors for s in t.stride()[:3])
