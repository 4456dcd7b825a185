"""Is the wind tunnel's grid fine enough to compare arms? A probe on a finished convergence run.

`convergence.py` tunes every arm over learning rates a factor of 2 apart, so an arm whose best rate falls
between two grid points is measured up to a few hundredths of a nat above what it could reach, and a
speedup measured against it moves with the grid, not with growth. This probe takes a `convergence.py --out
DIR` run and tunes its key pair (random init and x2 width with noise) again at the geometric midpoints either
side of each one's best rate (best / sqrt 2, best x sqrt 2), same data, schedule and decay branches, the
wind tunnel extending past the better midpoint when it is an edge, as it does for every arm; then it
recomputes the speedup with each arm at its best rate over all the rates tried. If random init gains more
than the grown model, the factor-2 figure flattered growth.

    python benchmarks/lr_resolution.py RUN_DIR [--record]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

KEY_PAIR = {"random_init": "init-wide-seed0", "hyperclone_noise": "grown-hyperclone_noise"}


def finer(run: Path, record: dict, bench, name: str) -> dict:
    """One arm over its factor-2 grid plus the two midpoints around its best: every rate's final loss, the best's curve."""
    import convergence as C

    arm, budget = record["arms"][name], record["large"]["tokens"]["wide"]
    wind = bench.tune(run / KEY_PAIR[name], C.Arm(name, "wide", None), f"finer-{name}", [arm["lr"] / 2**0.5, arm["lr"] * 2**0.5],
                      budget, C.BRANCHES)
    curves = {float(lr): {int(t): loss for t, loss in by.items()} for lr, by in wind["eval_loss"].items()}
    curves[arm["lr"]] = {int(t): loss for t, loss in arm["budget_eval_loss"].items()}
    final = {lr: curve[budget] for lr, curve in sorted(curves.items())}
    final.update({float(lr): loss for lr, loss in arm["tuning_eval_loss"].items()})
    best = min(curves, key=lambda lr: curves[lr][budget])
    return {"final_eval_loss_by_lr": {f"{lr:.3g}": loss for lr, loss in sorted(final.items())}, "lr": best,
            "budget_eval_loss": curves[best], "final_eval_loss": curves[best][budget], "factor2_lr": arm["lr"],
            "factor2_final_eval_loss": arm["final_eval_loss"]}


def main() -> None:
    import convergence as C

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a convergence.py --out directory with the key pair's arms")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/lr_resolution-<corpus>.json")
    args = ap.parse_args()

    record, bench = C.finished_run(args.run)
    started = time.perf_counter()
    arms = {name: finer(args.run, record, bench, name) for name in KEY_PAIR}
    small, params = record["small"], record["large"]["params"]["wide"]
    grown = arms["hyperclone_noise"]
    C._speedups(grown, arms["random_init"]["final_eval_loss"], record["large"]["tokens"]["wide"], small["tokens"] * small["params"] / params)
    result = C.probe_result("lr_resolution", record, args.run, started, factor2_speedup=record["arms"]["hyperclone_noise"]["speedup"],
                            speedup=grown["speedup"], speedup_including_small=grown["speedup_including_small"], arms=arms)
    for name, arm in arms.items():
        print(f"{name}: factor-2 grid {arm['factor2_lr']:.3g} -> {arm['factor2_final_eval_loss']:.4f}; finer {arm['lr']:.3g} -> "
              f"{arm['final_eval_loss']:.4f}", flush=True)
    print(f"x2 width speedup: {result['factor2_speedup']:.2f}x on the factor-2 grid, {result['speedup'] or 0:.2f}x on the finer one")
    C.emit_probe(result, record, args.record)


if __name__ == "__main__":
    main()
