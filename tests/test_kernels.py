"""Triton kernels against their PyTorch references, on CPU through Triton's interpreter
(TRITON_INTERPRET=1, small shapes); the GPU checks run only where CUDA is.

Tolerances: float32 within 1e-5 of the result's largest entry (the kernel accumulates in float32 in
another order); bfloat16 within 1e-2 of it (the output is rounded to bfloat16, 2^-8 relative)."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # read when triton is imported: without a GPU, kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from hyperclone.kernels.gram import gram_reference, gram_triton  # noqa: E402
from hyperclone.train import optim  # noqa: E402

SHAPES = [(3, 17, 29), (1, 40, 16), (2, 16, 50), (5, 33, 33), (1, 1, 7)]  # odd sizes, batches, tall, wide, square


@pytest.fixture
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreter tests run where there is no GPU")


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_kernel_matches_the_reference(shape, interpreter):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    sym = gram_reference(torch.randn(shape, generator=gen))  # a symmetric C, as Newton-Schulz gives it
    for c, alpha, beta in ((None, 1.0, 0.0), (sym, -4.775, 2.0315)):
        assert _relative(gram_triton(x, c, alpha, beta, block=16, block_k=16), gram_reference(x, c, alpha, beta)) <= 1e-5
    xb = x.to(torch.bfloat16)
    got = gram_triton(xb, block=16, block_k=16)
    assert got.dtype == torch.bfloat16 and _relative(got, gram_reference(xb.float())) <= 1e-2
    assert torch.equal(got, got.mT)  # mirrored: exactly symmetric


def test_newton_schulz_through_the_kernel_matches_torch(interpreter, monkeypatch):
    """The whole iteration with the kernel's products (forced on for CPU tensors) against torch's, in float32."""
    g = torch.randn(4, 24, 40, generator=torch.Generator().manual_seed(0))
    reference = optim.newton_schulz(g, dtype=torch.float32)
    monkeypatch.setattr(optim, "use_kernels", lambda x: True)
    monkeypatch.setattr(optim, "gram_triton", lambda *a, **k: gram_triton(*a, **k, block=16, block_k=16))
    assert _relative(optim.newton_schulz(g, dtype=torch.float32), reference) <= 1e-4


def test_cpu_tensors_never_take_the_kernel(monkeypatch):
    monkeypatch.delenv("HYPERCLONE_KERNELS", raising=False)
    from hyperclone.kernels import use_kernels

    assert not use_kernels(torch.zeros(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(1, 1024, 4096), (8, 768, 2048), (3, 517, 301)])
def test_gram_kernel_on_the_gpu(shape, monkeypatch):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    assert _relative(gram_triton(x), gram_reference(x.float())) <= 1e-2
    monkeypatch.setenv("HYPERCLONE_KERNELS", "0")
    off = optim.newton_schulz(x)
    monkeypatch.setenv("HYPERCLONE_KERNELS", "1")
    assert _relative(optim.newton_schulz(x), off) <= 3e-2  # two bf16 iterations of different rounding
