"""What only a GPU can check: Liger's kernels against plain transformers for every family the table says
Liger supports, a real `hyperclone train` with the kernels on and off, and the Triton kernels at real
sizes. Skipped where there is no CUDA (CI); run on a lent GPU machine."""
import copy
import json

import pytest
import torch

from hyperclone.arch import FAMILIES
from hyperclone.testing import randomize_, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LIGER_FAMILIES = [name for name, family in FAMILIES.items() if family.liger]


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", LIGER_FAMILIES)
@pytest.mark.parametrize("experts", [False, True])
def test_liger_computes_what_transformers_computes(family, experts):
    """One training forward + backward in float32: the loss and every gradient, with and without Liger.
    The reference runs first, since Liger also patches the family's module globals."""
    pytest.importorskip("liger_kernel")
    from transformers import AutoModelForCausalLM

    from hyperclone.kernels.liger import apply_liger

    if experts and FAMILIES[family].moe is None:
        pytest.skip("dense: no routed experts")
    config = tiny_config(family)
    if experts:  # Liger's fused experts replace every layer's: the test models' leading dense layers become MoE
        for field, all_moe in (("mlp_only_layers", []), ("first_k_dense_replace", 0)):
            if hasattr(config, field):
                setattr(config, field, all_moe)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_(model, seed=0)
    model = model.cuda().train()
    patched = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    loss, grads = _loss_and_grads(model, ids)
    assert apply_liger(patched, fused_experts=experts)
    liger_loss, liger_grads = _loss_and_grads(patched, ids)
    # Liger's fused experts multiply float32 tiles on the tensor cores as TF32 (10-bit mantissa), the rest
    # of Liger in full float32
    loss_tol, grad_tol = (1e-3, 1e-2) if experts else (1e-4, 1e-3)
    assert abs(float(liger_loss - loss)) <= loss_tol * abs(float(loss)), (float(liger_loss), float(loss))
    assert liger_grads.keys() == grads.keys()
    for name, grad in grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (liger_grads[name] - grad).abs().max() <= grad_tol * scale, name


def test_training_on_the_gpu_with_kernels_on_and_off(tiny, tmp_path):
    """A real run on CUDA takes Liger and the Triton kernels (MuonClip: Newton–Schulz and the max-logit capture)
    and its losses are those of the same run with HYPERCLONE_KERNELS=0."""
    pytest.importorskip("liger_kernel")
    import shutil
    import subprocess

    from tests.test_train import DATA, ENV, losses

    model = str(tiny("llama", vocab_size=300))
    runs = {}
    for kernels in ("1", "0"):
        result = subprocess.run([shutil.which("hyperclone"), "train", "--model", model, "--data", DATA, "--output",
                                 str(tmp_path / kernels), "--max-steps", "5", "--seq-len", "64", "--batch-size", "4",
                                 "--trackers", "none"], capture_output=True, text=True, timeout=600,
                                env={**ENV, "HYPERCLONE_KERNELS": kernels})
        assert result.returncode == 0, result.stderr
        runs[kernels] = (result.stdout + result.stderr, losses(tmp_path / kernels))
    assert "Liger kernels on llama" in runs["1"][0] and "Liger" not in runs["0"][0]
    on, off = runs["1"][1], runs["0"][1]
    assert len(on) == len(off) == 5
    assert abs(on[0] - off[0]) <= 1e-4 * off[0]  # the same model and batch: only the kernels' rounding differs
    assert all(abs(a - b) <= 2e-2 * b for a, b in zip(on, off)), (on, off)  # bf16 Newton–Schulz steps after that
    logged = [json.loads(line) for line in (tmp_path / "1" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["max_attn_logit"] > 0 for r in logged if "loss" in r)


@pytest.mark.parametrize("seq,window", [(2048, None), (4096, 1024)])
def test_max_logit_kernel_at_real_sizes(seq, window):
    from hyperclone.kernels.max_logit import max_logit_reference, max_logit_triton

    gen = torch.Generator("cuda").manual_seed(seq)
    q = torch.randn(2, 16, seq, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(2, 4, seq, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    exact = max_logit_reference(q, k, 128 ** -0.5, window=window)
    got = max_logit_triton(q, k, 128 ** -0.5, window)
    assert (got - exact).abs().max() <= 1e-4 * exact.abs().max()  # both: float32 products of the same bf16 inputs


@pytest.mark.parametrize("backward", ["auto", "triton"])  # auto: torch's flash backward where no window
@pytest.mark.parametrize("seq,window", [(2048, None), (4096, 1024)])
def test_fused_attention_at_real_sizes(seq, window, backward):
    """The fused Triton attention's output and gradients are as close to float32 attention as SDPA's in
    bf16 (within twice its error), with our backward and with torch's fed our log-sum-exp, and its max is
    the exact one."""
    import torch.nn.functional as F

    from hyperclone.kernels.attention import attention_reference, flash_attention_with_max
    from hyperclone.kernels.max_logit import max_logit_reference, visible

    gen = torch.Generator("cuda").manual_seed(seq)
    q, k, v = (torch.randn(2, heads, seq, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for heads in (16, 4, 4))
    grad_out = torch.randn(2, 16, seq, 128, device="cuda", generator=gen)
    scale = 128 ** -0.5
    mask = visible(seq, seq, slice(0, seq), window, "cuda")

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        (out.float() * grad_out).sum().backward()
        return [out.detach().float(), *(t.grad.float() for t in leaves)]

    exact = run(lambda *t: attention_reference(*t, scale, window), torch.float32)
    sdpa = run(lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask, scale=scale, enable_gqa=True), torch.bfloat16)
    ours = run(lambda *t: flash_attention_with_max(*t, scale, window, backward=backward)[0], torch.bfloat16)
    for name, a, b, e in zip(("out", "dq", "dk", "dv"), ours, sdpa, exact):
        worst, theirs = float((a - e).abs().max()), float((b - e).abs().max())
        assert worst <= 2 * theirs + 1e-3 * float(e.abs().max()), (name, worst, theirs)
    got = flash_attention_with_max(q, k, v, scale, window)[1]
    assert (got - max_logit_reference(q, k, scale, window=window)).abs().max() <= 1e-4 * got.abs().max()
