"""QK-Clip: keep every head's maximum pre-softmax attention logit at or below tau.

The maximum is recorded during the forward pass by an attention function registered with
transformers, so it costs nothing unless clipping is on. On a GPU in half precision that function is
one Triton flash attention that returns the exact max beside its output (hyperclone.kernels.attention);
elsewhere it streams the logits' exact max (hyperclone.kernels.max_logit), then runs transformers' own
SDPA, or the model's eager attention where SDPA cannot compute it (soft-capping, sinks).
After the optimizer step, a head whose max S_h exceeds tau has its query and key rows scaled so that
the product shrinks by gamma = tau / S_h (Kimi K2):
  - grouped-query attention: a kv head shared by several query heads is scaled by sqrt(min gamma)
    of its group, and each query head by min(1, gamma_h / that) — every head ends at or below tau;
  - MLA: the head's q and k "nope" parts by sqrt(gamma), its q rope part by gamma, the shared
    rotary key untouched.
Fused projections are scaled in place: phi3's stacked [q; k; v] rows, gpt_neox's per-head [q k v] rows
(the layout is the family table's). Heads behind q/k norms are bounded by the norms' weights and left
alone (scaling rows before a norm would not move them). OLMo's clip_qkv clamps q and k after the
projection: scaling is exact only below the clamp, so a head the clamp reaches can stay above tau until
a later step's clip.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from hyperclone.arch import FAMILIES, fused_qkv_rows
from hyperclone.kernels.attention import flash_attention_with_max, fused_applies
from hyperclone.kernels.max_logit import max_logit, tag_structural, visible
from hyperclone.train.optim import DTensor, shard_like

NAME = "hyperclone_qk_capture"
# q/k norms (per head or over the projection): the heads behind them are bounded by the norms' weights, and
# scaling the projection's rows would not move their logits
HEAD_NORMS = ("q_norm", "k_norm", "query_layernorm", "key_layernorm", "q_layernorm", "k_layernorm")
_registered = False


def _capture_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    plain = kwargs.get("softcap") is None and not hasattr(module, "sinks")
    if plain and fused_applies(query, value, attention_mask, dropout):  # one kernel: attention and its max (CUDA)
        window = kwargs.get("sliding_window") if attention_mask is None else attention_mask.hc_window or None
        out, per_head = flash_attention_with_max(query, key, value, scale, window)
        _record(module, per_head)
        return out.transpose(1, 2), None
    with torch.no_grad():
        # streamed, never the whole QKᵀ: a Triton kernel on CUDA, query blocks elsewhere
        _record(module, max_logit(query, key, scale, attention_mask, kwargs.get("sliding_window")))
    if not plain:
        return _model_eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _head_dim(module) -> int:
    return getattr(module, "head_dim", None) or module.head_size  # gpt_neox calls it head_size


def _record(module, per_head: torch.Tensor) -> None:
    seen = getattr(module, "_hc_max_logit", None)
    module._hc_max_logit = per_head if seen is None else torch.maximum(seen, per_head)


def _model_eager(module, query, key, value, attention_mask, **kwargs):
    """What SDPA cannot compute — soft-capped logits (gemma2), attention sinks (gpt_oss) — goes to the
    model's own eager attention. That one adds the mask to the scores, so the boolean mask meant for
    SDPA (or the causal one SDPA was left to apply itself) becomes additive here."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        q_len, k_len = query.shape[-2], key.shape[-2]
        allowed = attention_mask if attention_mask is not None else visible(q_len, k_len, slice(0, q_len), kwargs.get("sliding_window"), query.device)
        attention_mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, float("-inf"))
    return sys.modules[type(module).__module__].eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextmanager
def whole(param: torch.Tensor) -> Iterator[torch.Tensor]:
    """The whole tensor to scale in place: a sharded (FSDP2) parameter is gathered, then its shard written
    back. Heads' rows cross shard boundaries, and clipping is rare enough for the gather not to matter."""
    if not isinstance(param, DTensor):
        yield param
        return
    full = param.full_tensor()
    yield full
    param.copy_(shard_like(full, param))


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, _capture_attention)
        AttentionMaskInterface.register(NAME, lambda **kwargs: tag_structural(sdpa_mask(**kwargs), kwargs.get("config")))
        _registered = True


class QKClip:
    """Records per-head max logits of `model` and clips W_q / W_k after each optimizer step."""

    def __init__(self, model: torch.nn.Module, tau: float = 100.0):
        _register()
        model.set_attn_implementation(NAME)
        self.tau = tau
        family = FAMILIES.get(getattr(model.config, "model_type", None))
        self.fused = family.fused_qkv.rpartition(".")[2] if family and family.fused_qkv else None
        self.fused_layout = family.fused_qkv_layout if family else None
        self.modules, self.skipped = [], []
        for module in model.modules():
            separate = hasattr(module, "q_proj") and hasattr(module, "k_proj")
            if hasattr(module, "kv_b_proj") or separate or (self.fused and hasattr(module, self.fused)):
                normed = any(hasattr(module, n) for n in HEAD_NORMS)
                (self.skipped if normed else self.modules).append(module)
        self.last_max: float | None = None

    def observed_max(self) -> float | None:
        values = [m._hc_max_logit.max() for m in self.modules + self.skipped if getattr(m, "_hc_max_logit", None) is not None]
        return float(torch.stack(values).max()) if values else None

    def reset(self) -> None:
        for module in self.modules + self.skipped:
            module._hc_max_logit = None

    @torch.no_grad()
    def apply(self) -> None:
        self.last_max = self.observed_max()
        for module in self.modules + self.skipped:
            seen = getattr(module, "_hc_max_logit", None)
            module._hc_max_logit = None
            if seen is None or module in self.skipped:
                continue
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
            gamma = (self.tau / seen).clamp(max=1.0)
            if bool((gamma < 1).any()):
                if hasattr(module, "kv_b_proj"):
                    self._clip_mla(module, gamma)
                else:
                    self._clip_gqa(module, gamma)

    def _clip_gqa(self, module, gamma: torch.Tensor) -> None:
        heads = gamma.numel()
        kv_heads = self._kv_heads(module, heads)
        group = heads // kv_heads
        k_scale = gamma.view(kv_heads, group).amin(1).sqrt()
        q_scale = (gamma / k_scale.repeat_interleave(group)).clamp(max=1.0)
        for param, part_rows in self._qk_rows(module, heads, kv_heads):
            with whole(param) as tensor:
                for rows, scale in zip(part_rows(tensor), (q_scale, k_scale)):
                    if rows is not None:
                        rows.mul_(scale.to(rows.dtype).view(-1, *[1] * (rows.dim() - 1)))

    def _kv_heads(self, module, heads: int) -> int:
        if self.fused and hasattr(module, self.fused):
            rows = getattr(module, self.fused).weight.shape[0] // _head_dim(module)
            return heads if self.fused_layout == "per_head" else (rows - heads) // 2
        return module.k_proj.weight.shape[0] // _head_dim(module)

    def _qk_rows(self, module, heads: int, kv_heads: int):
        """(parameter, function of the whole tensor -> (its query rows [heads, head_dim, ...] or None, its key
        rows [kv_heads, head_dim, ...] or None)) for every weight and bias holding query or key rows."""
        dim = _head_dim(module)

        def split(t):
            return t.view(-1, dim, *t.shape[1:])  # [row heads, head_dim, ...]

        if self.fused and hasattr(module, self.fused):
            linear = getattr(module, self.fused)
            return [(p, lambda t: fused_qkv_rows(t, self.fused_layout, heads, kv_heads)[:2])
                    for p in (linear.weight, linear.bias) if p is not None]
        found = [(p, lambda t: (split(t), None)) for p in (module.q_proj.weight, module.q_proj.bias) if p is not None]
        return found + [(p, lambda t: (None, split(t))) for p in (module.k_proj.weight, module.k_proj.bias) if p is not None]

    def _clip_mla(self, module, gamma: torch.Tensor) -> None:
        nope, rope = module.qk_nope_head_dim, module.qk_rope_head_dim
        heads = gamma.numel()
        root = gamma.sqrt()
        with whole((module.q_b_proj if getattr(module, "q_b_proj", None) is not None else module.q_proj).weight) as q:
            q = q.view(heads, nope + rope, q.shape[-1])
            q[:, :nope].mul_(root.to(q.dtype)[:, None, None])
            q[:, nope:].mul_(gamma.to(q.dtype)[:, None, None])
        with whole(module.kv_b_proj.weight) as kv:
            kv.view(heads, -1, kv.shape[-1])[:, :nope].mul_(root.to(kv.dtype)[:, None, None])
