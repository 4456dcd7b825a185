"""MuonClip's Newton–Schulz hot path, measured against its baselines in the same run.

1. One Muon step over the matrices of a MoE model (every expert of every layer, and the attention
   projections): batched Newton–Schulz, one call per matrix shape (MuonClip), against the
   per-parameter loop it replaced (the baseline, written out below). On any machine.
2. On CUDA only: the one-triangle Triton X·Xᵀ (hyperclone.kernels.gram) against torch's bf16 matmul
   at square sizes up to 8192, and a whole Newton–Schulz with and without the kernel
   (HYPERCLONE_KERNELS=0).

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


def gram_sizes(repeats: int) -> list[dict]:
    from hyperclone.kernels.gram import gram_triton

    rows = []
    for n in (1024, 2048, 4096, 8192):
        x = torch.randn(1, n, n, device="cuda", dtype=torch.bfloat16)
        torch_s = timed(lambda: x @ x.mT, repeats)
        kernel_s = timed(lambda: gram_triton(x), repeats)
        rows.append({"n": n, "torch_ms": round(torch_s * 1e3, 3), "triton_ms": round(kernel_s * 1e3, 3),
                     "speedup": round(torch_s / kernel_s, 2), "tflops_triton": round(n**3 / kernel_s / 1e12, 1)})
    return rows


def ns_with_and_without_kernel(args) -> dict:
    stack = torch.randn(args.layers * args.experts, args.expert_inner, args.hidden, device="cuda")
    os.environ["HYPERCLONE_KERNELS"] = "0"
    off = timed(lambda: newton_schulz(stack), args.repeats)
    os.environ["HYPERCLONE_KERNELS"] = "1"
    on = timed(lambda: newton_schulz(stack), args.repeats)
    return {"stack": list(stack.shape), "torch_s": round(off, 4), "kernel_s": round(on, 4), "speedup": round(off / on, 2)}


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
    if device == "cuda":
        result["gram"] = gram_sizes(args.repeats)
        for row in result["gram"]:
            print(f"X·Xᵀ bf16 {row['n']}²: torch {row['torch_ms']} ms, one-triangle Triton {row['triton_ms']} ms -> {row['speedup']}x")
        result["newton_schulz"] = ns_with_and_without_kernel(args)
        print(f"Newton–Schulz on {result['newton_schulz']['stack']}: {result['newton_schulz']['speedup']}x with the kernel")
    if args.record:
        out = Path(__file__).resolve().parent / "results" / f"kernels-{'gpu' if device == 'cuda' else 'cpu'}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
