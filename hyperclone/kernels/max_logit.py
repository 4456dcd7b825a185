"""Each head's exact maximum pre-softmax attention logit, without materialising QKᵀ.

QK-Clip needs max over (batch, query, visible key) of scale·q·k per head. Materialising the scores
costs O(batch·heads·seq²) memory: at seq 4096 that alone exhausts a GPU. Both paths here stream:
the reference walks query blocks (O(block·seq) at a time); the Triton kernel tiles queries and keys
and keeps one running maximum per query row, the way FlashAttention keeps its softmax statistics.
Flash attention's log-sum-exp would not do: it bounds the max from above by up to log(seq), and
QK-Clip scales weights by tau / max, so it needs the max itself.
"""
from __future__ import annotations

import torch

QUERY_BLOCK = 256  # rows of scores the reference holds at once, per batch and head


def visible(q_len: int, k_len: int, rows: slice, window: int | None, device) -> torch.Tensor:
    """Causal (and sliding-window) visibility of keys for query rows `rows`, queries aligned to the end."""
    i = torch.arange(rows.start, rows.stop, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=device)[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window
    return allowed


def max_logit_reference(query: torch.Tensor, key: torch.Tensor, scale: float, attention_mask: torch.Tensor | None = None,
                        window: int | None = None) -> torch.Tensor:
    """Per query head, the max of scale·q·k over batch, queries and the keys each query sees, in float32.

    query [B, H, Lq, D], key [B, KVH, Lk, D] (grouped-query attention: H a multiple of KVH). Without a
    mask the attention is causal (with `window`: sliding); a bool mask says what is visible, a float
    mask is added to the scores — as transformers passes them to attention functions.
    """
    batch, heads, q_len, _ = query.shape
    keys = key.float().repeat_interleave(heads // key.shape[1], dim=1)
    k_len = keys.shape[-2]
    best = torch.full((heads,), float("-inf"), device=query.device)
    for start in range(0, q_len, QUERY_BLOCK):
        rows = slice(start, min(q_len, start + QUERY_BLOCK))
        scores = torch.matmul(query[:, :, rows].float(), keys.transpose(-1, -2)) * scale
        if attention_mask is None:
            scores = scores.masked_fill(~visible(q_len, k_len, rows, window, scores.device), float("-inf"))
        elif attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., rows, :k_len], float("-inf"))
        else:
            scores = scores + attention_mask[..., rows, :k_len].float()
        best = torch.maximum(best, scores.amax(dim=(0, 2, 3)))
    return best


def max_logit_triton(query: torch.Tensor, key: torch.Tensor, scale: float, window: int | None = None,
                     block_q: int | None = None, block_k: int = 64) -> torch.Tensor:
    """The Triton kernel for causal (optionally sliding-window) attention: `max_logit_reference` with no mask.

    `block_q` fixes the tiles (the interpreter tests use small ones); None lets the autotuner choose on a GPU."""
    from hyperclone.kernels.launch import launch, launch_flags, row_strides

    query, key = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key))
    batch, heads, q_len, dim = query.shape
    best = torch.full((batch * heads,), float("-inf"), dtype=torch.float32, device=query.device)
    args = (query, key, best, heads, key.shape[1], q_len, key.shape[2], dim, *row_strides(query, key), float(scale), int(window or 0))
    blocks = None if block_q is None and query.is_cuda else (block_q or 64, block_k)
    launch("max_logit", q_len, batch * heads, args, launch_flags(query, window), blocks)
    return best.view(batch, heads).amax(dim=0)


def tag_structural(mask: torch.Tensor | None, config=None) -> torch.Tensor | None:
    """Mark a bool attention mask that is exactly causal, or causal within the config's sliding window (no
    padding, queries ending where the keys end), with that window (0: none): `max_logit` then takes the
    tiled kernel instead of reading the mask. Checked element by element, once per mask rather than per
    layer, and only where the kernel would run."""
    from hyperclone.kernels import use_kernels

    if mask is None or mask.dtype != torch.bool or mask.dim() != 4 or not use_kernels(mask):
        return mask
    q_len, k_len = mask.shape[-2:]
    for window in (0, getattr(config, "sliding_window", None)):
        if window is not None and torch.equal(mask, visible(q_len, k_len, slice(0, q_len), window, mask.device).expand_as(mask)):
            mask.hc_window = window
            break
    return mask


def max_logit(query: torch.Tensor, key: torch.Tensor, scale: float, attention_mask: torch.Tensor | None = None,
              window: int | None = None) -> torch.Tensor:
    """The kernel where it applies (CUDA; causal or sliding, no mask or a mask `tag_structural` recognised),
    the streaming reference elsewhere."""
    from hyperclone.kernels import use_kernels

    structural = attention_mask is None or hasattr(attention_mask, "hc_window")
    if structural and use_kernels(query):
        return max_logit_triton(query, key, scale, window if attention_mask is None else attention_mask.hc_window or None)
    return max_logit_reference(query, key, scale, attention_mask, window)
