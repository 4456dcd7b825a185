"""MuonClip's Newton–Schulz hot path, measured against its baselines in the same run.

1. One Muon step over the matrices of a MoE model (every expert of every layer, and the attention
   projections): batched Newton–Schulz, one call per matrix shape (MuonClip), against the
   per-parameter loop it replaced (the baseline, written out below). On any machine.
2. On CUDA only: Newton–Schulz at 1024², 4096², 8192² and an expert stack [128, 768, 2048] with the
   one-triangle Triton kernel, against torch.optim.Muon's own iteration and the plain batched torch
   loop (HYPERCLONE_KERNELS=0); causal attention forward + backward with the max-logit capture
   against the same without it, at seq 2048 and 8192. (The training-step MFU and Liger figures of
   issue 18 are not measured here yet.)

    python benchmarks/kernels.py [--layers 4] [--experts 32] [--hidden 256] [--expert-inner 128] [--record]
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
    """Ours (batched, one-triangle kernel) against torch.optim.Muon's own iteration and the plain batched
    torch loop (HYPERCLONE_KERNELS=0), at the issue's sizes."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from hyperclone.train.optim import NS_COEFFICIENTS

    rows = []
    for shape in ((1024, 1024), (4096, 4096), (8192, 8192), (128, 768, 2048)):
        g = torch.randn(shape, device="cuda")
        os.environ["HYPERCLONE_KERNELS"] = "1"
        ours = timed(lambda: newton_schulz(g), repeats)
        os.environ["HYPERCLONE_KERNELS"] = "0"
        plain = timed(lambda: newton_schulz(g), repeats)
        os.environ["HYPERCLONE_KERNELS"] = "1"
        mats = [g] if g.dim() == 2 else list(g)  # torch's Muon orthogonalises one matrix at a time
        muon = timed(lambda: [_zeropower_via_newtonschulz(m, NS_COEFFICIENTS, 5, 1e-7) for m in mats], repeats)
        rows.append({"shape": list(shape), "ours_ms": round(ours * 1e3, 2), "plain_torch_ms": round(plain * 1e3, 2),
                     "torch_muon_ms": round(muon * 1e3, 2), "vs_torch_muon": round(muon / ours, 2), "vs_plain": round(plain / ours, 2)})
    return rows


def capture_overhead(repeats: int) -> list[dict]:
    """Causal attention forward + backward with the max-logit capture against the same without it."""
    import torch.nn.functional as F

    from hyperclone.kernels.max_logit import max_logit_triton

    rows = []
    for seq in (2048, 8192):
        q, k, v = (torch.randn(1, 32, seq, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

        def plain():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        def captured():
            with torch.no_grad():
                max_logit_triton(q, k, 128 ** -0.5)
            plain()

        base, ours = timed(plain, repeats), timed(captured, repeats)
        rows.append({"seq": seq, "attention_ms": round(base * 1e3, 2), "with_capture_ms": round(ours * 1e3, 2),
                     "overhead": round(ours / base - 1, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--expert-inner", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/kernels-<cpu|gpu>.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"machine": machine(), "settings": vars(args), "muon_step": muon_step(args, device)}
    step = result["muon_step"]
    print(f"Muon step over {step['matrices']} matrices of {step['shapes']} shapes on {device}: per-parameter "
          f"{step['per_parameter_s']:.3f} s, batched {step['batched_s']:.3f} s -> {step['speedup']:.2f}x")
    if device != "cuda":
        print("the kernel figures need CUDA: this machine has none, so only the batched Muon step was measured")
    else:
        result["newton_schulz"] = newton_schulz_sizes(args.repeats)
        for row in result["newton_schulz"]:
            print(f"Newton–Schulz {row['shape']}: ours {row['ours_ms']} ms, torch Muon {row['torch_muon_ms']} ms "
                  f"({row['vs_torch_muon']}x), plain batched torch {row['plain_torch_ms']} ms ({row['vs_plain']}x)")
        result["capture"] = capture_overhead(args.repeats)
        for row in result["capture"]:
            print(f"attention fwd+bwd at seq {row['seq']}: +{row['overhead']:.1%} with the max-logit capture")
    if args.record:
        out = Path(__file__).resolve().parent / "results" / f"kernels-{'gpu' if device == 'cuda' else 'cpu'}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
