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


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def max_logit_kernel(q_ptr, k_ptr, out_ptr, H, KVH, Lq, Lk, D, sqb, sqh, sql, sqd, skb, skh, skl, skd,
                         scale, window, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                         WINDOW: tl.constexpr, UPCAST: tl.constexpr):
        pid_q, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        kvh = h // (H // KVH)  # grouped-query attention: the kv head this query head reads
        rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        rd = tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + b * sqb + h * sqh + rq[:, None] * sql + rd[None, :] * sqd,
                    mask=(rq[:, None] < Lq) & (rd[None, :] < D), other=0.0)
        if UPCAST:  # Triton's CPU interpreter multiplies half-precision tiles wrongly
            q = q.to(tl.float32)
        pos = rq + (Lk - Lq)  # each query's position among the keys (queries end where the keys end)
        best = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
        hi = tl.minimum(Lk, (pid_q + 1) * BLOCK_Q + (Lk - Lq))  # causal: no key beyond the block's last query
        lo = 0
        if WINDOW:
            lo = tl.maximum(0, pid_q * BLOCK_Q + (Lk - Lq) - window + 1)
            lo = (lo // BLOCK_K) * BLOCK_K
        for k0 in range(lo, hi, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            kt = tl.load(k_ptr + b * skb + kvh * skh + rk[None, :] * skl + rd[:, None] * skd,
                         mask=(rk[None, :] < Lk) & (rd[:, None] < D), other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt) * scale
            allowed = (rk[None, :] <= pos[:, None]) & (rk[None, :] < Lk) & (rq[:, None] < Lq)
            if WINDOW:
                allowed &= rk[None, :] > pos[:, None] - window
            best = tl.maximum(best, tl.max(tl.where(allowed, s, float("-inf")), axis=1))
        tl.atomic_max(out_ptr + bh, tl.max(best, axis=0))  # one running max per (batch, head)

    # Tiles tuned per shape once per process on a GPU (the interpreter tests fix small ones).
    configs = [triton.Config({"BLOCK_Q": bq, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bq, bk, w, s in ((128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3))]
    return max_logit_kernel, triton.autotune(configs, key=["Lq", "Lk", "D", "WINDOW"])(max_logit_kernel)


_KERNELS = None


def max_logit_triton(query: torch.Tensor, key: torch.Tensor, scale: float, window: int | None = None,
                     block_q: int | None = None, block_k: int = 64) -> torch.Tensor:
    """The Triton kernel for causal (optionally sliding-window) attention: `max_logit_reference` with no mask.

    `block_q` fixes the tiles (the interpreter tests use small ones); None lets the autotuner choose."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _kernel()
    import triton

    batch, heads, q_len, dim = query.shape
    best = torch.full((batch * heads,), float("-inf"), dtype=torch.float32, device=query.device)
    args = (query, key, best, heads, key.shape[1], q_len, key.shape[2], dim, *query.stride(), *key.stride(),
            float(scale), int(window or 0))
    flags = dict(BLOCK_D=max(16, triton.next_power_of_2(dim)), WINDOW=bool(window), UPCAST=not query.is_cuda)
    fixed, tuned = _KERNELS
    if block_q is None and query.is_cuda:
        tuned[lambda meta: (triton.cdiv(q_len, meta["BLOCK_Q"]), batch * heads)](*args, **flags)
    else:
        block_q = block_q or 64
        fixed[(triton.cdiv(q_len, block_q), batch * heads)](*args, BLOCK_Q=block_q, BLOCK_K=block_k, **flags)
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
