"""Split a tensor into parts that sum back to it exactly in the stored dtype.

Why: a linear that reads n identical copies of its input computes sum_c W_c x, which equals
W x only if sum_c W_c == W. W/3 rounded to bf16 three times does not sum back to W (the reference
HyperCloning code loses 6.5e-3 in the logits that way).

How, without float64 and without a fallback pass:
- no noise: every part but the last is put on the grid of x's own unit in the last place,
  g = ulp(x), as round(x/n); every partial remainder is then a multiple of g below |x|, exact in
  float32 for float32, bfloat16 and float16 data alike, and the last part is representable in x's
  dtype. For a power-of-two n the parts are simply x/n (a multiply, exact unless subnormal).
- noise: the parts are cut off one at a time, each from what is left, r, by Sterbenz's lemma: when
  p lies in [r/2, 2r], r - p is exact in any binary floating-point format. A part aimed anywhere in
  [-r, 2r] can be made so: round the part itself when it is at least r/2, otherwise round the rest
  r - p (then in (r/2, 2r]) and take the part as the exact difference. So copies may change sign
  or exceed the weight, as far as SHARE_CAP allows, and still sum back to it bit for bit.
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


def _whole_in_last(x: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Infinities and NaNs (and, with noise, rows whose squares overflow) stay whole in the last part."""
    return [torch.zeros_like(x)] * (parts - 1) + [x]


def _split_on_grid(x: torch.Tensor, parts: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Noise-free parts round(x/n) on the grid of ulp(x), the last the exact remainder (see the module docstring)."""
    x32 = np.ascontiguousarray(x.to(torch.float32).numpy())
    if not np.isfinite(x32).all():
        return _whole_in_last(x, parts)
    units, grid = _grid_units(x32, dtype)
    even = np.rint(units * np.float32(1.0 / parts))
    rest = units - (parts - 1) * even  # whole numbers below 2^24: exact
    return [torch.from_numpy(even * grid).to(dtype)] * (parts - 1) + [torch.from_numpy(rest * grid).to(dtype)]


# How far noise may move each copy's share of a weight w from w/n, in units of |w|/n. Sterbenz cuts make any
# cap exact; this one is a choice of where the copies start: at 1.5 two copies of w start anywhere in
# [-w/4, 5w/4]. On the convergence benchmark's runs, scaling the old cap of 0.5 (the grid split's limit) by
# k = 1, 2, 3, 6 took x2 width to its random-init twin's loss 1.58x, 1.85x, 2.01x, 1.96x sooner on stdlib code
# and 1.67x, 1.96x, 2.12x, 1.93x on English docs (benchmarks/results/noise_beyond_cap-*.json): k = 3 is this.
SHARE_CAP = 1.5


def _split_with_noise(x: torch.Tensor, parts: int, dtype: torch.dtype, noise: float, generator) -> list[torch.Tensor]:
    """Parts w/n + eps_c with zero-sum eps, |eps| <= min(SHARE_CAP |w|/n, uniform of std `noise` x the row's RMS),
    each cut from the rest exactly (module docstring)."""
    x32 = np.ascontiguousarray(x.to(torch.float32).numpy())
    size = np.abs(x32)
    rows = x32.reshape(-1, x32.shape[-1]) if x32.ndim > 1 else x32.reshape(1, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        rms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float32) / rows.shape[-1]).reshape(*x32.shape[:-1], 1)
    if not np.isfinite(rms).all():  # a NaN or infinity in x makes its row's RMS one too
        return _whole_in_last(x, parts)
    # in steps of 1/128: the random steps are whole numbers in [-128, 127]
    amplitude = np.minimum(size * np.float32(SHARE_CAP / parts / 128), np.float32(math.sqrt(3.0) * noise / 128) * rms)
    randoms = _random_steps(generator, (parts - 1, *x32.shape))
    share = size * np.float32(1.0 / parts)  # x/n oriented along x, as every aim below is
    # The first cut's aim, x/n +- SHARE_CAP |x|/n, lies inside [-|x|, 2|x|] when SHARE_CAP < 3; later cuts come
    # from a rest the noise has moved and are clipped, and so are values near the dtype's largest, where
    # 2|x| itself would overflow.
    clip_first = SHARE_CAP >= 3 or float(size.max(initial=0.0)) > torch.finfo(dtype).max / 4
    along_x = np.copysign(np.float32(1), x32)
    rest, r, sign, out = x32, size, along_x, []
    for c in range(parts - 1):
        aim = randoms[c]
        aim *= amplitude
        with np.errstate(over="ignore"):
            aim += share
        if c > 0:  # the aim is x/n + eps along x; turn it along the rest, which may point the other way
            sign = np.copysign(np.float32(1), rest)
            r = np.abs(rest)
            aim *= along_x
            aim *= sign
        if c > 0 or clip_first:
            _clip(aim, r, dtype)
        part = _cut(r, aim, dtype)
        part *= sign
        rest = rest - part  # exact: Sterbenz
        out.append(torch.from_numpy(part).to(dtype))
    out.append(torch.from_numpy(rest).to(dtype))
    return out


def _clip(a: np.ndarray, r: np.ndarray, dtype: torch.dtype) -> None:
    """a into [-r, 2r] in place, and into what the dtype can hold for both the part and r minus it."""
    top = np.float32(torch.finfo(dtype).max)
    with np.errstate(over="ignore"):
        low, high = np.maximum(-r, r - top), np.minimum(r + r, top)
    np.minimum(a, high, out=a)
    np.maximum(a, low, out=a)


def _cut(r: np.ndarray, a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Oriented along what is left (r = |rest|), a part near `a` in [-r, 2r], representable in `dtype`,
    whose remainder r - part is exact too.

    The larger of a and r - a is in [r/2, 2r]: it is rounded, and the other is r minus it, exact by Sterbenz.
    Rounding keeps it inside [r/2, 2r] because r/2 and 2r are representable."""
    other = r - a
    low = a < other  # a below r/2: the remainder is the larger part
    large = _round(np.maximum(a, other, out=other), dtype)
    return _select(low, r - large, large)


def _select(mask: np.ndarray, yes: np.ndarray, no: np.ndarray) -> np.ndarray:
    """`yes` where `mask` else `no`, bit for bit: np.where is ~7x slower on a random mask, which this is."""
    ones = mask.view(np.uint8).astype(np.uint32)
    np.negative(ones, out=ones)  # 0 or all 32 bits set
    out = yes.view(np.uint32) ^ no.view(np.uint32)
    out &= ones
    out ^= no.view(np.uint32)
    return out.view(np.float32)


def _round(x32: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float32 values rounded to the nearest `dtype` value (ties to even), still as float32; may reuse x32."""
    if dtype == torch.float32:
        return x32
    if dtype == torch.float16:
        return x32.astype(np.float16).astype(np.float32)
    bits = x32.view(np.uint32)  # bfloat16 is float32's upper half: round its lower 16 bits away, in place
    odd = bits >> np.uint32(16)
    odd &= np.uint32(1)
    odd += np.uint32(0x7FFF)
    bits += odd
    bits &= np.uint32(0xFFFF0000)
    return x32


def _split_evenly(x: torch.Tensor, parts: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """n equal parts x/n for a power-of-two n: exact wherever x/n is not subnormal (checked)."""
    x = x.to(dtype)
    share = x * (1.0 / parts)
    if torch.equal(share * parts, x):
        return [share] * parts
    return _split_on_grid(x, parts, dtype)


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
        x = x.to(dtype)
        if noise > 0:
            pieces = _split_with_noise(x, parts, dtype, noise, generator)
        elif _pow2(parts):
            pieces = _split_evenly(x, parts, dtype)
        else:
            pieces = _split_on_grid(x, parts, dtype)
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
