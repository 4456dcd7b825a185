"""What the head start alone can give at the sizes the paper used, under published scaling-law fits.

`convergence.py` splits every grown arm's speedup into its head start (the random-init tokens whose WSD run
ends at the loss the grown model starts from) and what training after growth made of it: were the grown
model to learn exactly as random init does from that loss on, it would reach the twin's final loss after
budget - head start tokens, a speedup of budget / (budget - head start). This script asks what that first
factor is for models of 10^8 to 10^10 parameters, where no CPU benchmark reaches, using the fitted law
L(N, D) = E + A / N^alpha + B / D^beta (final loss of a compute-tuned run of N parameters on D tokens):
the small model (N / ratio parameters, `--small` tokens per parameter) ends at L(N / ratio, small x N / ratio),
and the head start is the D at which L(N, D) falls to that loss. It also asks how long the small model would
have to be pretrained for the head start alone to give 2x (half the large budget), which is None when no
amount of pretraining can: the small model's capacity term already sits above the large model's loss there.

Growth by x2 width multiplies a transformer's non-embedding parameters (the N of these fits) by 4, x2 width
and x2 depth by 8, x2 depth by 2. A computation from published constants, not a measurement.

    python benchmarks/head_start_at_scale.py [--large 20] [--small 100,300,1000] [--record]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
FITS = {  # E, A, B, alpha, beta
    "Hoffmann et al. 2022 (Chinchilla, approach 3)": (1.69, 406.4, 410.7, 0.34, 0.28),
    "Besiroglu et al. 2024 (the replication)": (1.8172, 482.01, 2085.43, 0.3478, 0.3658),
}
RATIOS = {"x2 depth": 2, "x2 width": 4, "x2 width + x2 depth": 8}
SIZES = (1e8, 1e9, 1e10)


def head_start(fit: tuple, n: float, ratio: float, small_tpp: float) -> float:
    """Tokens per large-model parameter at which L(n, D) reaches the small model's final loss (inf: never)."""
    e, a, b, alpha, beta = fit
    small = n / ratio
    left = b / (small * small_tpp) ** beta + a / small ** alpha - a / n ** alpha  # what B / D^beta must fall to
    return (b / left) ** (1 / beta) / n if left > 0 else float("inf")


def pretraining_for_half(fit: tuple, n: float, ratio: float, large_tpp: float) -> float | None:
    """Small-model tokens per parameter that make the head start half the large budget (None: no amount does)."""
    e, a, b, alpha, beta = fit
    small = n / ratio
    left = b / (n * large_tpp / 2) ** beta - (a / small ** alpha - a / n ** alpha)
    return (b / left) ** (1 / beta) / small if left > 0 else None


def table(large_tpp: float, smalls: list[float]) -> list[dict]:
    rows = []
    for name, fit in FITS.items():
        for growth, ratio in RATIOS.items():
            for n in SIZES:
                for small_tpp in smalls:
                    h = head_start(fit, n, ratio, small_tpp)
                    rows.append({"fit": name, "growth": growth, "params_large": n, "small_tokens_per_param": small_tpp,
                                 "head_start_tokens_per_param": h, "speedup_from_head_start": large_tpp / (large_tpp - h) if h < large_tpp else None,
                                 "small_tokens_per_param_for_2x": pretraining_for_half(fit, n, ratio, large_tpp)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", type=float, default=20, help="the large arms' tokens per parameter (20: compute-optimal)")
    ap.add_argument("--small", default="100,300,1000", help="the small model's tokens per parameter before growth")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/head_start_at_scale.json")
    args = ap.parse_args()
    rows = table(args.large, [float(x) for x in args.small.split(",")])
    print(f"| fit | growth | large params | small tokens/param | head start (tokens/param of {args.large:g}) | speedup from head start alone | small tokens/param for 2x |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        need = r["small_tokens_per_param_for_2x"]
        alone = r["speedup_from_head_start"]
        print(f"| {r['fit']} | {r['growth']} | {r['params_large']:.0e} | {r['small_tokens_per_param']:g} | {r['head_start_tokens_per_param']:.1f} | "
              f"{'unbounded' if alone is None else f'{alone:.2f}x'} | {'never' if need is None else f'{need:,.0f}'} |")
    if args.record:
        result = {"benchmark": "head_start_at_scale", "large_tokens_per_param": args.large, "fits": FITS, "rows": rows}
        (HERE / "results" / "head_start_at_scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
