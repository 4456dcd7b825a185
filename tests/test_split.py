"""The exact splitter: parts sum back to the tensor exactly in its own dtype, noise included."""
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
    noise=st.sampled_from([0.0, 0.01, 0.3]),
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
