"""Triton kernels against their PyTorch references, on CPU through Triton's interpreter
(TRITON_INTERPRET=1, small shapes); the GPU checks run only where CUDA is.

Tolerances: float32 within 1e-5 of the result's largest entry (the kernel accumulates in float32 in
another order); bfloat16 within 1e-2 of it (the output is rounded to bfloat16, 2^-8 relative)."""
import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # read when triton is imported: without a GPU, kernels run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from hyperclone.arch import FAMILIES  # noqa: E402
from hyperclone.kernels.gram import gram_reference, gram_triton  # noqa: E402
from hyperclone.train import optim  # noqa: E402

QKCLIP = importlib.import_module("hyperclone.train.qkclip")  # by name: the function hyperclone.train.train hides it
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
    monkeypatch.setattr(optim, "gram_triton", lambda *a, **k: gram_triton(*a, **k, block=16, block_k=16))
    assert _relative(optim.newton_schulz(g, dtype=torch.float32, kernel=True), reference) <= 1e-4


def test_cpu_tensors_never_take_the_kernel(monkeypatch):
    monkeypatch.delenv("HYPERCLONE_KERNELS", raising=False)
    from hyperclone.kernels import use_kernels

    assert not use_kernels(torch.zeros(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(1, 1024, 4096), (8, 768, 2048), (3, 517, 301)])
def test_gram_kernel_on_the_gpu(shape):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    assert _relative(gram_triton(x), gram_reference(x.float())) <= 1e-2
    off = optim.newton_schulz(x, kernel=False)
    assert _relative(optim.newton_schulz(x, kernel=True), off) <= 3e-2  # two bf16 iterations of different rounding


def _exact_max(q, k, scale, window=None, mask=None):
    """Every score materialised (what the streamed paths must equal), in float32."""
    keys = k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ keys.mT) * scale
    q_len, k_len = scores.shape[-2:]
    i, j = torch.arange(q_len)[:, None] + (k_len - q_len), torch.arange(k_len)[None, :]
    visible = (j <= i) & ((j > i - window) if window else True) if mask is None else mask
    return scores.masked_fill(~visible, float("-inf")), scores.masked_fill(~visible, float("-inf")).amax(dim=(0, 2, 3))


ATTENTION = [  # batch, heads, kv heads, query length, key length, head dim, sliding window
    (2, 4, 2, 37, 37, 8, None), (1, 4, 1, 50, 50, 16, 7), (3, 2, 2, 20, 45, 8, None), (1, 6, 3, 70, 70, 12, 16),
    (2, 2, 1, 100, 100, 8, 40), (1, 2, 2, 30, 90, 8, 25),  # windows wider than a tile: unmasked tiles between masked ones
]


@pytest.mark.parametrize("case", ATTENTION)
def test_max_logit_kernel_is_the_exact_max(case, interpreter):
    from hyperclone.kernels.max_logit import max_logit_reference, max_logit_triton

    b, h, kvh, lq, lk, d, window = case
    gen = torch.Generator().manual_seed(lq)
    q, k = torch.randn(b, h, lq, d, generator=gen), torch.randn(b, kvh, lk, d, generator=gen) * 0.3
    scores, exact = _exact_max(q, k, 0.3, window)
    for got in (max_logit_triton(q, k, 0.3, window, block_q=16, block_k=16), max_logit_reference(q, k, 0.3, None, window)):
        assert (got - exact).abs().max() <= 1e-5 * exact.abs().max(), (got, exact)
    # flash attention's log-sum-exp only bounds the max from above (by up to log of the keys seen): not the max
    lse = torch.logsumexp(scores, dim=-1).amax(dim=(0, 2))
    assert (lse - exact).min() > 0.1
    qb, kb = q.bfloat16(), k.bfloat16()
    got = max_logit_triton(qb, kb, 0.3, window, block_q=16, block_k=16)
    assert (got - _exact_max(qb, kb, 0.3, window)[1]).abs().max() <= 1e-5 * exact.abs().max()  # float32 products of bf16 inputs


def _attention_grads(fn, q, k, v, grad_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    (out.float() * grad_out).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("case", ATTENTION)
def test_flash_attention_returns_the_exact_max_and_the_gradients_of_attention(case, interpreter):
    """The fused forward's max is the exact one (not the log-sum-exp bound), and its output and its Triton
    backward are attention's, in float32 (1e-5 of the largest entry) and bfloat16 (1e-2) — on the
    [B, L, H, D] layout transformers' projections give, seen through a transpose."""
    from hyperclone.kernels.attention import attention_reference, flash_attention_with_max

    b, h, kvh, lq, lk, d, window = case
    gen = torch.Generator().manual_seed(lq)
    q = torch.randn(b, lq, h, d, generator=gen).transpose(1, 2)
    k, v = (torch.randn(b, lk, kvh, d, generator=gen).transpose(1, 2) * s for s in (0.3, 1.0))
    grad_out = torch.randn(b, h, lq, d, generator=gen)
    exact = _exact_max(q, k, 0.3, window)[1]
    maxima = []
    # PyTorch's own flash backward fed our output and log-sum-exp (the CPU twin of the op a GPU runs) where it
    # applies: no window, as many queries as keys
    backwards = ["triton"] + (["torch"] if window is None and lq == lk else [])
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        inputs = [t.to(dtype) for t in (q, k, v)]
        ref, ref_grads = _attention_grads(lambda *t: attention_reference(*t, 0.3, window), *inputs, grad_out)
        for backward in backwards if dtype == torch.float32 else ["triton"]:
            got, got_grads = _attention_grads(lambda *t: maxima.append(flash_attention_with_max(*t, 0.3, window)[1]) or
                                              flash_attention_with_max(*t, 0.3, window, backward=backward), *inputs, grad_out)
            assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)
            for a, r in zip([got, *got_grads], [ref, *ref_grads]):
                assert _relative(a, r) <= tolerance, backward
    assert (maxima[0] - exact).abs().max() <= 1e-5 * exact.abs().max()
    assert (maxima[-1] - _exact_max(q.bfloat16(), k.bfloat16(), 0.3, window)[1]).abs().max() <= 1e-5 * exact.abs().max()


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_training_through_the_fused_attention_equals_sdpa_with_the_capture(family, interpreter, monkeypatch):
    """QK-Clip's attention function on the fused kernel (as on a GPU, the interpreter standing in) gives a
    model the loss, every gradient and every head's max logit that SDPA with the separate capture gives:
    grouped-query heads (qwen2), sliding-window layers (mistral)."""
    from transformers import AutoModelForCausalLM

    import hyperclone.kernels
    from hyperclone.kernels import attention
    from hyperclone.testing import randomize_, tiny_config
    from hyperclone.train.qkclip import QKClip

    model = AutoModelForCausalLM.from_config(tiny_config(family, sliding_window=6))
    randomize_(model, seed=0)
    qk = QKClip(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        maxima = torch.stack([m._hc_max_logit for m in qk.modules])
        qk.reset()
        return loss.detach(), maxima, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, maxima, grads = step()
    calls, fused = [], attention.flash_attention_with_max
    monkeypatch.setattr(hyperclone.kernels, "use_kernels", lambda x: True)
    monkeypatch.setattr(QKCLIP, "flash_attention_with_max", lambda *a: calls.append(a[4]) or fused(*a))
    fused_loss, fused_maxima, fused_grads = step()
    assert len(calls) == len(qk.modules)
    assert (6 in calls) == (family == "mistral")
    assert torch.allclose(fused_loss, loss, rtol=1e-5, atol=0)
    assert torch.allclose(fused_maxima, maxima, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        assert _relative(fused_grads[name], grad) <= 1e-4, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_fused_attention_leaves_every_family_computing_the_same(family, interpreter, monkeypatch):
    """With the kernels on (the interpreter standing in for a GPU), QK-Clip's attention function gives every
    family's logits as transformers computes them: the fused kernel where it applies, the separate pass
    where it does not (soft-capping, sinks, MLA's narrower values)."""
    import hyperclone.kernels
    from tests.test_optim import assert_capture_changes_nothing

    assert_capture_changes_nothing(family, then=lambda: monkeypatch.setattr(hyperclone.kernels, "use_kernels", lambda x: True))


def test_streamed_reference_takes_transformers_masks():
    """Bool and additive masks (padding, as transformers passes them) on the CPU path, block by block."""
    from hyperclone.kernels import max_logit as module

    q, k = torch.randn(2, 4, 300, 8), torch.randn(2, 2, 300, 8)
    mask = torch.ones(300, 300, dtype=torch.bool).tril().expand(2, 1, 300, 300).clone()
    mask[0, :, :, :40] = False  # left padding in the first sequence
    exact = _exact_max(q, k, 0.5, mask=mask)[1]
    assert module.QUERY_BLOCK < 300  # more than one block
    assert torch.allclose(module.max_logit_reference(q, k, 0.5, mask), exact, rtol=1e-6, atol=0)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(module.max_logit_reference(q, k, 0.5, additive), exact, rtol=1e-6, atol=0)


def test_the_family_table_claims_liger_only_where_liger_has_kernels():
    """Each family marked `liger` has an entry in Liger's own table (and is checked on a GPU in test_gpu.py)."""
    liger = pytest.importorskip("liger_kernel.transformers.monkey_patch")
    from hyperclone.arch import FAMILIES

    claimed = {name for name, family in FAMILIES.items() if family.liger}
    assert claimed <= set(liger.MODEL_TYPE_TO_APPLY_LIGER_FN)
    assert {"llama", "qwen3", "qwen3_moe", "mixtral"} <= claimed and "glm4_moe" not in claimed


def test_liger_is_never_applied_off_the_gpu_or_when_turned_off(monkeypatch):
    from transformers import AutoModelForCausalLM

    from hyperclone.kernels import liger
    from hyperclone.testing import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    forward = model.forward
    if not torch.cuda.is_available():
        assert liger.apply_liger(model, fused_experts=True) is None and model.forward == forward
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even where CUDA is, HYPERCLONE_KERNELS=0 wins
    monkeypatch.setenv("HYPERCLONE_KERNELS", "0")
    assert not liger.liger_applies(model) and liger.apply_liger(model, fused_experts=True) is None


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_layers_take_the_kernel(family, interpreter, monkeypatch):
    """transformers hands sliding-window layers a mask tensor: the capture recognises it as structural
    (causal within the window, no padding) and takes the tiled kernel, with the maxima the streamed
    reference reads from the mask. A padded batch keeps the reference. (The separate pass, which float32
    and soft-capped layers take on a GPU; the fused attention is tested below.)"""
    from transformers import AutoModelForCausalLM

    import hyperclone.kernels
    from hyperclone.kernels import max_logit as module
    from hyperclone.testing import randomize_, tiny_config
    from hyperclone.train.qkclip import QKClip

    model = AutoModelForCausalLM.from_config(tiny_config(family, sliding_window=5))
    randomize_(model, seed=0)
    qk = QKClip(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))

    def maxima(**inputs):
        with torch.no_grad():
            model(input_ids=ids, **inputs)
        found = torch.stack([m._hc_max_logit for m in qk.modules])
        qk.reset()
        return found

    reference = maxima()
    calls, kernel = [], module.max_logit_triton
    monkeypatch.setattr(hyperclone.kernels, "use_kernels", lambda x: True)  # as on CUDA, the interpreter standing in
    monkeypatch.setattr(QKCLIP, "fused_applies", lambda *a: False)
    monkeypatch.setattr(module, "max_logit_triton",
                        lambda q, k, scale, window=None: calls.append(window) or kernel(q, k, scale, window, block_q=16, block_k=16))
    assert torch.allclose(maxima(), reference, rtol=1e-5, atol=0)
    assert len(calls) == len(qk.modules) and 5 in calls  # every layer, the sliding ones with their window
    calls.clear()
    padded = torch.ones_like(ids)
    padded[0, :3] = 0
    maxima(attention_mask=padded)
    assert calls == []  # padding: no mask is structural, every layer reads its mask


def test_importing_hyperclone_loads_no_gpu_package():
    """CPU training never imports Triton: the kernels load only when a CUDA tensor (or these tests) asks."""
    import subprocess
    import sys

    code = "import sys, hyperclone, hyperclone.train.qkclip; print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"
