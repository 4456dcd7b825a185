"""MuonClip's Newton–Schulz hot path, measured against its baselines in the same run.

1. One Muon step over the matrices of a MoE model (every expert of every layer, and the attention
   projections): batched Newton–Schulz, one call per matrix shape (MuonClip), against the
   per-parameter loop it replaced (the baseline, written out below). On any machine.
2. On CUDA only: Newton–Schulz from 1024² to 8192² and on expert stacks ([128, 768, 2048] among them)
   as MuonClip runs it, with the one-triangle Triton products forced and with torch's, against
   torch.optim.Muon's own iteration; causal attention forward + backward with the max-logit capture
   (the fused Triton attention, and the separate max pass before SDPA) against SDPA without it, at seq
   2048 and 8192.
3. On CUDA only (--steps): training steps of a ~1.2 B dense llama (Llama-3.2-1B's shape, seq 4096) and a
   small qwen3_moe, kernels on (Liger, Triton) and off (HYPERCLONE_KERNELS=0), AdamW and MuonClip, the dense
   model's layers also compiled (`train --compile`): tokens/s, peak memory and MFU; the MoE's routed experts
   as transformers' eager loop, its grouped_mm, and Liger's fused experts. Each arm runs in its own process: Liger patches module globals, which would leak
   into the arms measured after it.

    python benchmarks/kernel_speed.py [--layers 4] [--experts 32] [--hidden 256] [--expert-inner 128] [--steps] [--record]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_machine import machine  # noqa: E402

from hyperclone.train.optim import MuonClip, newton_schulz, rms_matched_lr  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def moe_matrices(layers: int, experts: int, hidden: int, inner: int, device: str) -> list[torch.nn.Parameter]:
    """The Muon parameters of a MoE model: per layer q/k/v/o and every expert's gate, up and down."""
    shapes = []
    for _ in range(layers):
        shapes += [(hidden, hidden)] * 4 + [(inner, hidden)] * (2 * experts) + [(hidden, inner)] * experts
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def per_parameter_step(params: list, buffers: dict, lr: float = 1e-3) -> None:
    """The baseline: Muon one matrix at a time (the loop MuonClip had before batching)."""
    with torch.no_grad():
        for p in params:
            buf = buffers.setdefault(id(p), torch.zeros_like(p))
            buf.lerp_(p.grad, 0.05)
            update = newton_schulz(p.grad.lerp(buf, 0.95))
            p.mul_(1 - lr * 0.1)
            p.add_(update, alpha=-rms_matched_lr(lr, p.shape))


def muon_step(args, device: str) -> dict:
    params = moe_matrices(args.layers, args.experts, args.hidden, args.expert_inner, device)
    batched = MuonClip([dict(params=params, use_muon=True)], lr=1e-3)
    buffers: dict = {}
    base = timed(lambda: per_parameter_step(params, buffers), args.repeats)
    ours = timed(batched.step, args.repeats)
    return {"matrices": len(params), "shapes": len({tuple(p.shape) for p in params}), "per_parameter_s": round(base, 4),
            "batched_s": round(ours, 4), "speedup": round(base / ours, 2)}


def newton_schulz_sizes(repeats: int) -> list[dict]:
    """Ours (as MuonClip runs it), the Triton products forced and torch's forced (the plain batched loop),
    against torch.optim.Muon's own iteration, at the issue's sizes and a few between."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from hyperclone.train.optim import NS_COEFFICIENTS

    rows = []
    for shape in ((1024, 1024), (2048, 2048), (4096, 4096), (8192, 8192), (32, 1024, 1024), (128, 768, 2048)):
        g = torch.randn(shape, device="cuda")
        kernel = timed(lambda: newton_schulz(g, kernel=True), repeats)
        plain = timed(lambda: newton_schulz(g, kernel=False), repeats)
        ours = timed(lambda: newton_schulz(g), repeats)  # as MuonClip runs it: the kernel where it pays
        mats = [g] if g.dim() == 2 else list(g)  # torch's Muon orthogonalises one matrix at a time
        muon = timed(lambda: [_zeropower_via_newtonschulz(m, NS_COEFFICIENTS, 5, 1e-7) for m in mats], repeats)
        rows.append({"shape": list(shape), "ours_ms": round(ours * 1e3, 2), "triton_ms": round(kernel * 1e3, 2),
                     "plain_torch_ms": round(plain * 1e3, 2), "torch_muon_ms": round(muon * 1e3, 2),
                     "vs_torch_muon": round(muon / ours, 2), "triton_vs_plain": round(plain / kernel, 2)})
    return rows


def capture_overhead(repeats: int) -> list[dict]:
    """Causal attention forward + backward with the max-logit capture against the same without it (SDPA,
    torch's flash attention): the separate tiled max pass before SDPA, and the fused Triton forward that
    returns the max beside its output (what QK-Clip takes on a GPU in half precision) with torch's flash
    backward (`overhead`, the goal's figure) and with ours."""
    import torch.nn.functional as F

    from hyperclone.kernels.attention import flash_attention_with_max
    from hyperclone.kernels.max_logit import max_logit_triton

    rows = []
    for seq in (2048, 8192):
        q, k, v = (torch.randn(1, 32, seq, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

        def plain():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        def separate():
            with torch.no_grad():
                max_logit_triton(q, k, 128 ** -0.5)
            plain()

        def fused(backward: str):
            return lambda: flash_attention_with_max(q, k, v, 128 ** -0.5, backward=backward)[0].sum().backward()

        base, apart = timed(plain, repeats), timed(separate, repeats)
        torch_bwd, triton_bwd = timed(fused("torch"), repeats), timed(fused("triton"), repeats)
        rows.append({"seq": seq, "attention_ms": round(base * 1e3, 2), "separate_capture_ms": round(apart * 1e3, 2),
                     "fused_ms": round(torch_bwd * 1e3, 2), "fused_triton_backward_ms": round(triton_bwd * 1e3, 2),
                     "separate_overhead": round(apart / base - 1, 3), "overhead": round(torch_bwd / base - 1, 3),
                     "triton_backward_overhead": round(triton_bwd / base - 1, 3)})
    return rows


H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM: the MFU denominator
DENSE_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192)
SMALL_MOE = dict(model_type="qwen3_moe", hidden_size=1024, moe_intermediate_size=512, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64, num_experts_per_tok=8,
                 vocab_size=151936, max_position_embeddings=8192, tie_word_embeddings=False)
STEP_ARMS = {  # name: (model, optimizer, kernels on, experts implementation, Liger's fused experts, layers compiled)
    "dense_adamw_off": (DENSE_1B, "adamw", False, None, False, False),
    "dense_adamw_on": (DENSE_1B, "adamw", True, None, False, False),
    "dense_adamw_on_compiled": (DENSE_1B, "adamw", True, None, False, True),
    "dense_muonclip_off": (DENSE_1B, "muonclip", False, None, False, False),
    "dense_muonclip_on": (DENSE_1B, "muonclip", True, None, False, False),
    "dense_muonclip_on_compiled": (DENSE_1B, "muonclip", True, None, False, True),
    "moe_eager_off": (SMALL_MOE, "adamw", False, "eager", False, False),
    "moe_grouped_mm_off": (SMALL_MOE, "adamw", False, "grouped_mm", False, False),
    "moe_grouped_mm_on": (SMALL_MOE, "adamw", True, "grouped_mm", False, False),
    "moe_liger_experts_on": (SMALL_MOE, "adamw", True, "grouped_mm", True, False),
}


def flops_per_token(config, seq: int) -> float:
    """6 x the parameters a token passes through (active experts only, the lm_head, not the input lookup),
    plus causal attention's 6·layers·hidden·seq (the 12·L·d·T of PaLM's appendix, halved for the mask)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv, head_dim = config.num_attention_heads, config.num_key_value_heads, getattr(config, "head_dim", None) or d // config.num_attention_heads
    attention = d * head_dim * (2 * heads + 2 * kv)
    mlp = 3 * d * (config.moe_intermediate_size * config.num_experts_per_tok if hasattr(config, "num_experts") else config.intermediate_size)
    router = d * getattr(config, "num_experts", 0)
    return 6 * (layers * (attention + mlp + router) + d * config.vocab_size) + 6 * layers * heads * head_dim * seq


def step_arm(name: str, seq: int, batch: int, steps: int) -> dict:
    """One arm, in this process: build the model on the GPU, then time `steps` optimizer steps after 3 warm-ups."""
    spec, optimizer_kind, kernels, experts, liger_experts, compiled = STEP_ARMS[name]
    os.environ["HYPERCLONE_KERNELS"] = "1" if kernels else "0"
    from transformers import AutoConfig, AutoModelForCausalLM

    from hyperclone.kernels.liger import apply_liger
    from hyperclone.loading import compile_layers
    from hyperclone.train.optim import build_optimizer
    from hyperclone.train.qkclip import QKClip

    config = AutoConfig.for_model(**spec)
    extra = {"experts_implementation": experts} if experts else {}
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **extra)  # fp32 masters, bf16 autocast
    applied = apply_liger(model, fused_experts=liger_experts)
    if compiled:  # what `hyperclone train --compile` does, after Liger as there (the warm-up steps compile)
        compile_layers(model)
    qk = QKClip(model) if optimizer_kind == "muonclip" else None
    optimizer = build_optimizer(model, optimizer_kind, lr=1e-4, qk_clip=qk)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):  # what Accelerate's mixed_precision="bf16" does
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    tokens_per_s = batch * seq / per_step
    return {"arm": name, "optimizer": optimizer_kind, "kernels": kernels, "liger": applied, "experts": experts,
            "liger_experts": liger_experts, "compiled": compiled, "parameters": sum(p.numel() for p in model.parameters()), "seq": seq, "batch": batch,
            "step_s": round(per_step, 4), "tokens_per_s": round(tokens_per_s), "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "mfu": round(tokens_per_s * flops_per_token(config, seq) / H100_BF16_PEAK, 3)}


def training_steps(seq: int, batch: int, steps: int, arms: list[str]) -> list[dict]:
    """Each arm in a fresh process (an arm that fails, out of memory say, is recorded as such)."""
    import subprocess

    rows = []
    for name in arms:
        done = subprocess.run([sys.executable, __file__, "--arm", name, "--seq", str(seq), "--batch", str(batch),
                               "--step-count", str(steps)], capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if done.returncode == 0 and lines else {"arm": name, "failed": done.stderr.strip().splitlines()[-1:]}
        print(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--expert-inner", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", action="store_true", help="also the training-step arms (CUDA; several minutes)")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--step-count", type=int, default=8)
    parser.add_argument("--arms", default=",".join(STEP_ARMS), help="comma-separated training-step arms (default: all)")
    parser.add_argument("--arm", choices=list(STEP_ARMS), help=argparse.SUPPRESS)  # one training-step arm, in a child process
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/kernels-<cpu|gpu>.json")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(step_arm(args.arm, args.seq, args.batch, args.step_count)))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(__file__).resolve().parent / "results" / f"kernels-{'gpu' if device == 'cuda' else 'cpu'}.json"

    def save() -> None:  # after every section: a run cut short keeps what it measured
        if args.record:
            out.write_text(json.dumps(result, indent=1) + "\n")

    result = {"machine": machine(), "settings": vars(args), "muon_step": muon_step(args, device)}
    save()
    step = result["muon_step"]
    print(f"Muon step over {step['matrices']} matrices of {step['shapes']} shapes on {device}: per-parameter "
          f"{step['per_parameter_s']:.3f} s, batched {step['batched_s']:.3f} s -> {step['speedup']:.2f}x")
    if device != "cuda":
        print("the kernel figures need CUDA: this machine has none, so only the batched Muon step was measured")
    else:
        result["newton_schulz"] = newton_schulz_sizes(args.repeats)
        save()
        for row in result["newton_schulz"]:
            print(f"Newton–Schulz {row['shape']}: ours {row['ours_ms']} ms, torch Muon {row['torch_muon_ms']} ms "
                  f"({row['vs_torch_muon']}x); Triton products {row['triton_ms']} ms against plain batched torch "
                  f"{row['plain_torch_ms']} ms ({row['triton_vs_plain']}x)")
        result["capture"] = capture_overhead(args.repeats)
        save()
        for row in result["capture"]:
            print(f"attention fwd+bwd at seq {row['seq']}: {row['overhead']:+.1%} with the fused max-logit capture "
                  f"({row['triton_backward_overhead']:+.1%} with our Triton backward), {row['separate_overhead']:+.1%} "
                  "with the separate pass")
        if args.steps:
            result["training_steps"] = training_steps(args.seq, args.batch, args.step_count, args.arms.split(","))
            save()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
