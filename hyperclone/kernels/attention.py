"""Causal flash attention whose forward also gives each head's exact maximum pre-softmax logit.

QK-Clip needs max(scale·q·k) per head every step. A separate pass over QKᵀ costs one of attention's
seven products (QKᵀ and PV forward; QKᵀ, dV, dP, dQ, dK backward), about 14 %, too much for the
≤ 10 % goal. A FlashAttention forward already keeps a running row maximum of the scores for its
softmax; at the end of a row that maximum is the exact one (unlike the log-sum-exp, which bounds it
from above by up to log(keys)), so the capture costs one reduction per tile.

The backward needs only the output and the log-sum-exp, so on a GPU it is PyTorch's own flash backward,
the one SDPA's backward runs: the capture then adds nothing there. Where that one does not apply (sliding
windows, queries fewer than keys) a FlashAttention-2 backward in Triton runs instead: dK and dV per key
block (looping over the query heads of its group for grouped-query attention), then dQ per query block,
both recomputing the probabilities from the saved log-sum-exp. Queries end where the keys end (causal, as
in training); `window` is transformers' sliding window (key j visible to query i when i - window < j ≤ i).
The kernels themselves are in attention_triton.py, imported only when one runs.
"""
from __future__ import annotations

import functools
import math

import torch

from hyperclone.kernels.launch import launch, launch_flags, row_strides

LN2 = math.log(2)  # the kernels keep the log-sum-exp in base 2; torch's flash backward reads it in base e


def _triton_backward(grad_out, query, key, value, out, lse, scale, window, blocks):
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    delta = (grad_out.float() * out.float()).sum(-1).reshape(batch * heads, q_len)  # rowsum(dO ∘ O)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (query, key, value))  # dk, dv alike
    common = (heads, kv_heads, q_len, k_len, dim, *row_strides(query, key, value, grad_out))
    tail, flags = (float(scale), int(window or 0)), launch_flags(query, window)
    launch("dkdv", k_len, batch * kv_heads, (query, key, value, grad_out, lse, delta, dk, dv, *common, *dk.stride()[:3], *tail),
           flags, blocks)
    launch("dq", q_len, batch * heads, (query, key, value, grad_out, lse, delta, dq, *common, *dq.stride()[:3], *tail),
           flags, blocks)
    return dq, dk, dv


def _torch_flash_backward(grad_out, query, key, value, out, lse, scale):
    """PyTorch's own FlashAttention-2 backward (what SDPA's backward runs), fed our output and log-sum-exp.
    Its contract, as torch's meta function for the forward states it: the log-sum-exp [B, H, Lq] in float32
    and natural log, no cumulative sequence lengths (not variable-length), rng state unused without
    dropout; grouped-query keys and values are reduced over their query heads by the kernel itself."""
    batch, heads, q_len, _ = query.shape
    lse = (lse * LN2).view(batch, heads, q_len)
    if not query.is_cuda:  # the CPU twin of the op (same log-sum-exp; tests check the conversion with it)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, query, key, value, out, lse, 0.0, True, scale=scale)
    rng = torch.zeros(2, dtype=torch.uint64, device=query.device)
    unused = torch.zeros((), dtype=torch.uint64, device=query.device)
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        grad_out, query, key, value, out, lse, None, None, q_len, key.shape[2], 0.0, True, rng, unused, scale=scale)


class FlashAttentionWithMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale, window, blocks, backward):
        query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
        batch, heads, q_len, dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        # the output is laid out [B, L, H, D], the layout transformers' attention functions return
        out = torch.empty(batch, q_len, heads, dim, dtype=query.dtype, device=query.device).transpose(1, 2)
        lse = torch.empty(batch * heads, q_len, dtype=torch.float32, device=query.device)
        best = torch.full((batch * heads,), float("-inf"), dtype=torch.float32, device=query.device)
        args = (query, key, value, out, lse, best, heads, kv_heads, q_len, k_len, dim,
                *row_strides(query, key, value, out), float(scale), int(window or 0))
        launch("forward", q_len, batch * heads, args, launch_flags(query, window), blocks)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.scale, ctx.window, ctx.blocks, ctx.backward = scale, window, blocks, backward
        ctx.mark_non_differentiable(best)
        return out, best.view(batch, heads).amax(dim=0)

    @staticmethod
    def backward(ctx, grad_out, _grad_max):
        query, key, value, out, lse = ctx.saved_tensors
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        if ctx.backward == "torch":
            grads = _torch_flash_backward(grad_out, query, key, value, out, lse, ctx.scale)
        else:
            grads = _triton_backward(grad_out, query, key, value, out, lse, ctx.scale, ctx.window, ctx.blocks)
        return *grads, None, None, None, None


def flash_attention_with_max(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                             window: int | None = None, blocks: tuple[int, int] | None = None, backward: str = "auto"):
    """Causal attention of query [B, H, Lq, D] over key/value [B, KVH, Lk, D] (H a multiple of KVH), and
    each head's max of scale·q·k over batch, queries and visible keys (float32, not differentiable).
    Returns (output [B, H, Lq, D] as a view of a [B, Lq, H, D] tensor, max [H]). `blocks` fixes the
    (query, key) tiles; None lets the autotuner choose on a GPU and takes small ones in the interpreter.
    `backward`: "triton" (ours), "torch" (PyTorch's flash backward: no window, Lq = Lk), or "auto" — torch's
    where it applies on a GPU, since it is SDPA's own and so costs what attention without the capture costs."""
    if blocks is None and not query.is_cuda:
        blocks = (16, 16)
    if backward == "auto":
        square = query.shape[2] == key.shape[2]  # torch aligns a causal mask top-left where lengths differ; we bottom-right
        flash = query.is_cuda and torch.cuda.get_device_capability(query.device) >= (8, 0)  # torch's flash kernels: Ampere on
        backward = "torch" if flash and square and not window else "triton"
    apply = _opaque_apply() if query.is_cuda else FlashAttentionWithMax.apply
    return apply(query, key, value, scale, window, blocks, backward)


@functools.cache
def _opaque_apply():
    """Under --compile the kernel is launched as it is, a break in the compiled graph: it is already fused,
    and its launcher (autotuner, grid) is nothing for the compiler to trace. Made on first use: wrapping
    imports torch._dynamo, and with it Triton, which must not happen on import (the interpreter tests set
    TRITON_INTERPRET before Triton loads)."""
    return torch.compiler.disable(FlashAttentionWithMax.apply)


def fused_applies(query: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float) -> bool:
    """Whether attention and the capture can be this one kernel: kernels on (see `use_kernels`), causal or
    sliding with no other mask (None, or one `max_logit.tag_structural` recognised), no dropout, values as
    wide as queries (not MLA's), and half-precision inputs on a GPU (Triton would multiply float32 tiles in
    TF32, below SDPA's float32)."""
    from hyperclone.kernels import use_kernels

    structural = attention_mask is None or hasattr(attention_mask, "hc_window")
    half = query.dtype in (torch.bfloat16, torch.float16) or not query.is_cuda
    shapes = value.shape[-1] == query.shape[-1] <= 256
    return structural and not dropout and half and shapes and use_kernels(query)


def attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                        window: int | None = None) -> torch.Tensor:
    """What the kernel must compute, every score materialised in float32 (tests only: O(seq²) memory)."""
    from hyperclone.kernels.max_logit import visible

    group = query.shape[1] // key.shape[1]
    keys, values = (t.float().repeat_interleave(group, dim=1) for t in (key, value))
    scores = (query.float() @ keys.mT) * scale
    q_len, k_len = scores.shape[-2:]
    scores = scores.masked_fill(~visible(q_len, k_len, slice(0, q_len), window, scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ values
