"""Split a tensor into parts that sum back to it exactly in the stored dtype.

Why: a linear that reads n identical copies of its input computes sum_c W_c x, which equals
W x only if sum_c W_c == W. W/3 rounded to bf16 three times does not sum back to W (the reference
HyperCloning code loses 6.5e-3 in the logits that way), so we round all parts but the last, make the
last the exact remainder, and fall back element by element where that remainder is not representable.
"""
from __future__ import annotations

import torch


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
    if parts == 1 and scale == 1.0:
        return [x.to(dtype)]
    plain = scale == 1.0 and offset == 0.0
    # All but the last part may be any value of `dtype`, so they are drawn in float32 (cheap); only
    # the remainder must be exact, so it alone is computed in float64.
    work = x.to(torch.float32) if plain else (scale * (x.to(torch.float64) + offset) - parts * offset)
    share = work / parts
    if noise > 0:
        rms = work.pow(2).mean(dim=-1, keepdim=True).sqrt() if x.dim() > 1 else work.pow(2).mean().sqrt()
        eps = torch.randn((parts - 1, *x.shape), dtype=torch.float32, generator=generator)
        first = (share + eps * (noise * rms)).to(dtype)
    else:
        first = share.to(dtype).expand(parts - 1, *x.shape)
    target = x.to(torch.float64) if plain else work
    taken = first[0].to(torch.float64) if parts == 2 else first.to(torch.float64).sum(0)
    last = target - taken
    last_rounded = last.to(dtype)
    ok = last_rounded.to(torch.float64) == last
    if bool(ok.all()):
        return list(first.unbind(0)) + [last_rounded]
    # Elements whose remainder is not representable (a few %, with noise) are redone alone: the even
    # split, then — when `scale` is a whole number k — k parts equal to x and the rest -offset.
    bad = ~ok
    first = first.clone()
    t = target[bad]
    even = (t / parts).to(dtype).to(torch.float64)
    fixed_first = even.expand(parts - 1, *t.shape).clone()
    fixed_last = t - (parts - 1) * even
    still = fixed_last.to(dtype).to(torch.float64) != fixed_last
    if bool(still.any()) and float(scale).is_integer():
        k = int(scale)
        xb = x.to(torch.float64)[bad][still]
        options = [xb if c < k else torch.full_like(xb, -offset) for c in range(parts)]
        fixed_first[:, still] = torch.stack(options[:-1])
        fixed_last[still] = options[-1]
    first[:, bad] = fixed_first.to(dtype)
    last_rounded[bad] = fixed_last.to(dtype)
    return list(first.unbind(0)) + [last_rounded]
