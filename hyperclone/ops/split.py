"""Split a tensor into parts that sum back to it exactly in the stored dtype.

Why: a linear that reads n identical copies of its input computes sum_c W_c x, which equals
W x only if sum_c W_c == W. W/3 rounded to bf16 three times does not sum back to W (the reference
HyperCloning code loses 6.5e-3 in the logits that way).

How, without float64 and without a fallback pass: every part but the last is put on the grid of
x's own unit in the last place, g = ulp(x). Then every partial remainder x - p_0 - ... - p_c is a
multiple of g smaller in magnitude than x (the noise is capped at |x|/2n per part for that), so
it is exact in float32 for float32, bfloat16 and float16 data alike (fp32 holds any multiple of g
below 2^24 g), and the last part, a multiple of g below |x|, is representable in x's dtype: the
parts sum back to x exactly by construction. Without noise and for a power-of-two n, the parts are
simply x/n — a multiply, exact unless it lands among the subnormals, which are redone on the grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Per dtype: bits of mantissa, and its smallest spacing (the subnormal step) as a float32.
_GRID = {torch.float32: (23, 2.0**-149), torch.bfloat16: (7, 2.0**-133), torch.float16: (10, 2.0**-24)}
EXPONENT_BITS = np.int32(0x7F800000)


def _grid_units(x32: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(units, g): each element's unit in the last place in `dtype`, g = ulp(x), and x in those
    units, x / g — a whole number below 2^(mantissa+1), exact in float32."""
    mantissa, smallest = _GRID[dtype]
    grid = np.bitwise_and(x32.view(np.int32), EXPONENT_BITS).view(np.float32)  # 2^floor(log2|x|), 0 below normal
    grid *= np.float32(2.0**-mantissa)
    np.maximum(grid, np.float32(smallest), out=grid)
    return x32 / grid, grid


def _random_steps(generator: torch.Generator | None, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in [-128, 127] as float32, from a PCG64 stream seeded by `generator`'s seed.

    Why not torch.rand: torch's CPU generator (mt19937) costs ~2 ns an element, more than the rest
    of the split together; PCG64's raw stream gives 8 such integers per 64-bit draw, and that raw
    stream is stable across numpy versions, so the bytes of a grown checkpoint are too.
    """
    count = math.prod(shape)
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()
    raw = np.random.PCG64(seed).random_raw((count + 7) // 8)
    return raw.view(np.int8)[:count].astype(np.float32).reshape(shape)


def _split_on_grid(x: torch.Tensor, parts: int, dtype: torch.dtype, noise: float, generator) -> list[torch.Tensor]:
    """Parts on the grid of ulp(x), the last the exact remainder (see the module docstring)."""
    x32 = np.ascontiguousarray(x.to(torch.float32).numpy())
    if not np.isfinite(x32).all():  # infinities and NaNs stay whole in the last part
        zero = torch.zeros(x.shape, dtype=dtype)
        return [zero] * (parts - 1) + [x.to(dtype)]
    units, grid = _grid_units(x32, dtype)
    share = units * np.float32(1.0 / parts)
    if noise > 0:
        # half-width of the noise in grid units: noise x the row's RMS (as a standard deviation),
        # capped at |x| / 2n so that every remainder stays below |x| and so stays exact
        rows = x32.reshape(-1, x32.shape[-1]) if x32.ndim > 1 else x32.reshape(1, -1)
        rms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float32) / rows.shape[-1]).reshape(*x32.shape[:-1], 1)
        with np.errstate(over="ignore"):  # rms / g overflows only where |x|/2n is the smaller bound
            amplitude = np.minimum(np.abs(units) * np.float32(1.0 / (2 * parts)), np.float32(math.sqrt(3.0) * noise) * rms / grid)
        amplitude *= np.float32(1.0 / 128)
        randoms = _random_steps(generator, (parts - 1, *x32.shape))
    else:
        even = np.rint(share)
    rest = units
    out = []
    for c in range(parts - 1):
        if noise > 0:
            step = randoms[c]
            step *= amplitude
            step += share
            np.rint(step, out=step)
        else:
            step = even
        rest = rest - step  # whole numbers below 2^24: exact
        out.append(torch.from_numpy(step * grid).to(dtype))
    out.append(torch.from_numpy(rest * grid).to(dtype))
    return out


def _split_evenly(x: torch.Tensor, parts: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """n equal parts x/n for a power-of-two n: exact wherever x/n is not subnormal (checked)."""
    x = x.to(dtype)
    share = x * (1.0 / parts)
    if torch.equal(share * parts, x):
        return [share] * parts
    return _split_on_grid(x, parts, dtype, 0.0, None)


def _pow2(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


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
    """Parts p_c in `dtype` with sum_c (offset + p_c) == scale * (offset + x) exactly.

    `x` holds values representable in `dtype` (any float tensor; rows are the last-but-one axis).
    `noise` adds zero-sum noise of that size relative to each row's RMS (capped per element where
    exactness needs it), breaking the symmetry of the copies without changing their sum.
    `scale`/`offset` serve tied final norms (gemma's `(1 + w)` with an embedding scaled by
    1/sqrt(n)) and cloned experts' down projections; for plain weights they stay 1 and 0.
    """
    if parts == 1 and scale == 1.0 and offset == 0.0:
        return [x.to(dtype)]
    if offset == 0.0 and _pow2(scale) and scale >= 1.0:
        if noise == 0.0 and _pow2(parts):
            pieces = _split_evenly(x, parts, dtype)
        else:
            pieces = _split_on_grid(x.to(dtype), parts, dtype, noise, generator)
        if scale == 1.0:
            return pieces
        scaled = [p * scale for p in pieces]  # exact unless it overflows
        if all(bool(torch.isfinite(p).all()) for p in scaled) or not bool(torch.isfinite(x).all()):
            return scaled
    return _split_affine(x, parts, dtype, noise=noise, generator=generator, scale=scale, offset=offset)


def _split_affine(x, parts, dtype, *, noise, generator, scale, offset) -> list[torch.Tensor]:
    """The general case (offsets, scales that are not powers of two): the remainder in float64,
    checked, with an element-wise fallback. Only small vectors (tied final norms) and cloned experts
    under unusual scales come here."""
    work = scale * (x.to(torch.float64) + offset) - parts * offset
    share = work / parts
    if noise > 0:
        rms = work.pow(2).mean(dim=-1, keepdim=True).sqrt() if x.dim() > 1 else work.pow(2).mean().sqrt()
        eps = torch.randn((parts - 1, *x.shape), dtype=torch.float64, generator=generator)
        first = (share + eps * (noise * rms)).to(dtype)
    else:
        first = share.to(dtype).expand(parts - 1, *x.shape)
    last = work - first.to(torch.float64).sum(0)
    last_rounded = last.to(dtype)
    ok = last_rounded.to(torch.float64) == last
    if bool(ok.all()):
        return list(first.unbind(0)) + [last_rounded]
    # Elements whose remainder is not representable are redone alone: the even split, then — when
    # `scale` is a whole number k — k parts equal to x and the rest -offset, which is always exact.
    bad = ~ok
    first = first.clone()
    t = work[bad]
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
