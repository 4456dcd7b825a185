"""The exact splitter: parts sum back to the tensor exactly in its own dtype, noise included."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperclone.ops import split_exact
from hyperclone.ops.transform import Segment, produce_rows

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@settings(max_examples=60, deadline=None)
@given(
    parts=st.integers(2, 7),
    dtype=st.sampled_from(DTYPES),
    noise=st.sampled_from([0.0, 0.01, 0.3, 1.5, 6.0]),
    seed=st.integers(0, 2**31),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_parts_sum_exactly(parts, dtype, noise, seed, magnitude):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(16, 24, generator=gen) * magnitude).to(dtype)
    pieces = split_exact(x, parts, dtype, noise=noise, generator=gen)
    assert len(pieces) == parts and all(p.dtype == dtype for p in pieces)
    total = torch.stack([p.to(torch.float64) for p in pieces]).sum(0)
    assert torch.equal(total, x.to(torch.float64))
    if noise > 0:  # the copies really differ
        assert not torch.equal(pieces[0], pieces[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_noisy_parts_stay_exact_where_floats_are_awkward(dtype, parts):
    """Zeros of both signs, subnormals, values near the dtype's largest: every part finite and representable,
    the sum exact, at a noise far above the cap (so every part is aimed at the edge of what is allowed)."""
    info = torch.finfo(dtype)
    gen = torch.Generator().manual_seed(parts)
    x = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    x[0] = 0.0
    x[1, :32] = -0.0
    x[2] = x[2] * info.smallest_normal  # subnormals and the smallest normals
    x[3] = x[3].sign() * info.tiny * torch.arange(64, dtype=torch.float64)
    x[4] = x[4].sign() * info.max * torch.linspace(0.5, 1.0, 64, dtype=torch.float64)  # 2|w| would overflow
    x = x.to(dtype)
    pieces = split_exact(x, parts, dtype, noise=100.0, generator=gen)
    assert all(torch.isfinite(p).all() for p in pieces)
    assert torch.equal(torch.stack([p.to(torch.float64) for p in pieces]).sum(0), x.to(torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_copies_shares_reach_the_cap_sign_changes_included(dtype):
    """At the default noise two copies of w start anywhere in w/2 +- SHARE_CAP |w|/2 (beyond [0, w]: a copy
    may hold more than the weight, its twin the difference of the other sign), and no further."""
    from hyperclone.ops.split import SHARE_CAP
    from hyperclone.targets import DEFAULT_NOISE

    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)).to(dtype)
    first, second = split_exact(x, 2, dtype, noise=DEFAULT_NOISE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.double() + second.double(), x.double())
    share = (first.double() / x.double())[x != 0]
    reach = 0.5 * SHARE_CAP
    assert share.min() < 0.5 - 0.9 * reach and share.max() > 0.5 + 0.9 * reach  # the cap is reached on both sides
    assert share.min() >= 0.5 - reach * 1.01 and share.max() <= 0.5 + reach * 1.01  # and not passed (rounding aside)
    assert share.min() < 0 and share.max() > 1  # sign-changing parts, exact all the same


@settings(max_examples=30, deadline=None)
@given(parts=st.sampled_from([1, 4, 9]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_offset_norm_parts_are_exact_for_square_widths(parts, dtype, seed):
    """Tied gemma final norm: sum_c (1 + p_c) == sqrt(n) (1 + w) exactly."""
    gen = torch.Generator().manual_seed(seed)
    w = (0.3 * torch.randn(40, generator=gen)).to(dtype)
    k = int(parts**0.5)
    pieces = split_exact(w, parts, dtype, scale=float(k), offset=1.0)
    total = torch.stack([1.0 + p.to(torch.float64) for p in pieces]).sum(0)
    assert torch.equal(total, k * (1.0 + w.to(torch.float64)))


def test_noise_is_reproducible_and_chunk_independent_of_reader():
    x = torch.randn(10, 8)
    seg = Segment("split", 10, 8, "w", copies=3, noise=0.05, key="w")
    read = lambda name, a, b: x[a:b]  # noqa: E731
    first = torch.cat(list(produce_rows([seg], read, torch.float32, seed=7)))
    again = torch.cat(list(produce_rows([seg], read, torch.float32, seed=7)))
    other = torch.cat(list(produce_rows([seg], read, torch.float32, seed=8)))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # the parts sum back to x (in float64, so the check itself adds no rounding that depends on the CPU)
    assert torch.allclose(first.view(10, 3, 8).double().sum(1), x.double(), rtol=0, atol=1e-12 * float(x.abs().max()))


def test_noise_above_the_cap_changes_few_weights_and_the_plan_says_so(tiny):
    """At 0.5 the exact split's |x|/2n bound already binds for almost every weight, so 5 gives nearly the
    same parts: a user asking for more symmetry breaking is told it barely moves anything."""
    import hyperclone
    from hyperclone.targets import NOISE_CAP

    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    parts = {noise: split_exact(x, 2, torch.float32, noise=noise, generator=torch.Generator().manual_seed(0))[0]
             for noise in (0.05, NOISE_CAP, 10 * NOISE_CAP)}
    changed = lambda a, b: float((parts[a] != parts[b]).float().mean())  # noqa: E731
    assert changed(NOISE_CAP, 10 * NOISE_CAP) < 0.01 < 0.5 < changed(0.05, NOISE_CAP)
    src = tiny("llama")
    assert not hyperclone.plan(src, dict(width=2, noise=NOISE_CAP)).warnings
    assert any("changes little" in w for w in hyperclone.plan(src, dict(width=2, noise=10 * NOISE_CAP)).warnings)
