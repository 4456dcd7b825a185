"""How far should noise move each copy's share of a weight? A probe on a finished convergence run.

Until stop 32 `grow` kept every copy's share within |w|/2n of w/n (each of two copies between a quarter and
three quarters of w): the grid split was exact only there, and at noise 0.5 that cap bound for almost every
weight. With the small model pretrained at its tuned rate, the copies of a x2-wide model parted only halfway
in training (correlation ~0.5 against ~0.1 for unrelated units), so the cap looked like what limited the
payoff. This probe takes a `convergence.py --out DIR` run, reads its x2-wide grown model and its
exact-copies twin, and writes models whose noise is k times the run's own zero-sum pattern:
W = W_exact + k (W_noise - W_exact). Computed in float64 and stored in float32, the parts no longer sum
back exactly (the logits move by about 1e-5, printed from `hyperclone.verify`), which does not matter for
what is measured: which cap pays. Each k is tuned and measured like the run's arms, against that run's
random init (speedup = its tokens / the probe's tokens to reach its final loss).

What it found (results/noise_beyond_cap-*.json, on runs grown with the old cap) set `ops.split.SHARE_CAP`,
and the split was rebuilt to be exact at it in every dtype (Sterbenz cuts instead of the grid).

    python benchmarks/noise_beyond_cap.py RUN_DIR [--ks 1,2,3,6] [--record]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def scaled(run: Path, k: float, out: Path) -> Path:
    """The run's x2-wide grown model with its zero-sum noise pattern scaled by k (float64 sum, stored float32)."""
    from safetensors.torch import load_file, save_file

    exact = load_file(run / "grown-exact_copies" / "model.safetensors")
    noisy = load_file(run / "grown-hyperclone_noise" / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(run / "grown-exact_copies" / name, out / name)
    weights = {n: (exact[n].double() + k * (noisy[n].double() - exact[n].double())).float().contiguous() for n in exact}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def probe(run: Path, k: float, record: dict, bench) -> dict:
    import hyperclone
    import convergence as C

    arm, random_init, small = record["arms"]["hyperclone_noise"], record["arms"]["random_init"], record["small"]
    budget = record["large"]["tokens"]["wide"]
    model = scaled(run, k, run / f"noise-x{k:g}")
    small_dir = bench.small_final(small["lr"])
    drift = hyperclone.verify(small_dir, model)["max_abs_diff"]
    lrs = sorted({float(lr) for lr in arm["tuning_eval_loss"]})
    # trained as the run trained its grown arm (warmup, weight decay), so k = 1 is that arm again
    wind = bench.tune(model, C.recorded_arm(record, "hyperclone_noise"), f"tune-noise-x{k:g}", lrs, budget, C.BRANCHES)
    curve = C.rate_curve(wind, wind["best_lr"])
    entry = {"k": k, "max_abs_logit_diff": drift, "lr": wind["best_lr"], "start_eval_loss": C._start(run / f"tune-noise-x{k:g}"),
             "budget_eval_loss": curve, "final_eval_loss": curve[budget]}
    baseline = {int(t): loss for t, loss in random_init["budget_eval_loss"].items()}
    C.wide_speedups(entry, baseline, record)
    return entry


def main() -> None:
    import convergence as C

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a convergence.py --out directory with the x2-width arms")
    ap.add_argument("--ks", default="1,2,3,6", help="noise multiples of the run's zero-sum pattern (1 = the run's own grown model)")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/noise_beyond_cap-<corpus>.json")
    args = ap.parse_args()

    record, bench = C.finished_run(args.run)
    started = time.perf_counter()
    rows = []
    for k in map(float, args.ks.split(",")):
        rows.append(probe(args.run, k, record, bench))
        row = rows[-1]
        print(f"noise x{k:g}: lr {row['lr']:.3g}, final {row['final_eval_loss']:.3f}, speedup {row['speedup'] or 0:.2f}x "
              f"(incl. small {row['speedup_including_small'] or 0:.2f}x), max |dlogit| {row['max_abs_logit_diff']:.1e}", flush=True)
    result = C.probe_result("noise_beyond_cap", record, args.run, started,
                            random_init_final_eval_loss=record["arms"]["random_init"]["final_eval_loss"],
                            grown_speedup=record["arms"]["hyperclone_noise"]["speedup"], probes=rows)
    C.emit_probe(result, record, args.record)


if __name__ == "__main__":
    main()
