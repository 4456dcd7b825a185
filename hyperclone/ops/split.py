"""Split a tensor into parts that sum back to it exactly in the stored dtype.

Why: a linear that reads n identical copies of its input computes sum_c W_c x, which equals
W x only if sum_c W_c == W. W/3 rounded to bf16 three times does not sum back to W (the reference
HyperCloning code loses 6.5e-3 in the logits that way), so we round all parts but the last, make the
last the exact remainder, and fall back element by element where that remainder is not representable.
"""
from __future__ import annotations

import torch


def _round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).to(torch.float64)


def split_exact(
    x: torch.Tensor,
    parts: int,
    dtype: torch.dtype,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[torch.Tensor]:
    """Parts p_c in `dtype` with sum_c (offset + p_c) == scale * (offset + x), exactly where possible.

    `x` holds values representable in `dtype` (any float tensor; rows are the last-but-one axis).
    `noise` adds zero-sum noise of that size relative to each row's RMS, breaking the symmetry of
    the copies without changing their sum. `scale`/`offset` serve tied final norms (gemma's
    `(1 + w)` with an embedding scaled by 1/sqrt(n)); for plain weights they stay 1 and 0.

    Fallbacks per element, in order: the noisy split, the even split, and — when `scale` is a whole
    number k — k parts equal to x and the rest equal to -offset, which is always exact.
    """
    x = x.to(torch.float64)
    if parts == 1 and scale == 1.0:
        return [x.to(dtype)]
    target = scale * (x + offset) - parts * offset
    even = _round(target / parts, dtype)
    if noise > 0:
        rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt() if x.dim() > 1 else x.pow(2).mean().sqrt()
        eps = torch.randn((parts - 1, *x.shape), dtype=torch.float64, generator=generator) * (noise * rms)
        first = _round(target / parts + eps, dtype)
    else:
        first = even.expand(parts - 1, *x.shape)
    last = target - first.sum(0)
    ok = _round(last, dtype) == last
    if noise > 0 and not bool(ok.all()):
        even_last = target - (parts - 1) * even
        use_even = ~ok
        first = torch.where(use_even, even, first)
        last = torch.where(use_even, even_last, last)
        ok = _round(last, dtype) == last
    if not bool(ok.all()) and float(scale).is_integer():
        k = int(scale)
        fallback = torch.stack([x if c < k else torch.full_like(x, -offset) for c in range(parts)])
        first = torch.where(ok, first, fallback[:-1])
        last = torch.where(ok, last, fallback[-1])
    return [p.to(dtype) for p in first.unbind(0)] + [last.to(dtype)]
