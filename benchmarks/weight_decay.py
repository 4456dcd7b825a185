"""Does weight decay spend the grown model's head start? A probe on a finished convergence run.

Decoupled weight decay shrinks every weight by lr x wd per step. At hyperclone train's default 0.1, over the
x2-wide arm's 656 steps at the grown model's tuned rate (8e-3), it would take the weights to about 0.59 of
where they started if no gradient held them; random init at its 4e-3 would keep 0.77. A random init has
nothing to lose to that pull. A grown model starts with the small model's trained weights, and training after
growth keeps only two thirds to three quarters of what its head start is worth (README "Does growth pay?").
This probe takes a `convergence.py --out DIR` run and tunes its key pair (random init and x2 width with noise)
again at other weight decays. Each decay gets the run's grid of learning rates (extended past an edge, as
every arm's is) and the same data, schedule and decay branches. Then the probe takes each arm at its best
decay and rate and recomputes the speedup; it also gives the speedup at each decay both arms share.

What it found on runs where every arm trained at 0.1 (results/weight_decay-*.json): without decay the grown
model ends 0.0086 nats lower on stdlib code and 0.0085 lower on English docs, more than its seeds spread
(under 0.01, most under 0.005). Random init does best at 0.1 on both (0 and 0.3 end 0.003-0.018 higher, within
its seed spread). So recipes/after-growth.yaml sets weight_decay 0, and convergence.py's grown arms train
with it.

    python benchmarks/weight_decay.py RUN_DIR [--decays 0,0.1,0.3] [--record]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

KEY_PAIR = ("random_init", "hyperclone_noise")


def _tunnel(run: Path, record: dict, bench, name: str, decay: float) -> dict:
    """One arm at one weight decay: each rate's final loss, and the best rate's curve over the budgets."""
    import convergence as C

    arm, entry, budget = C.recorded_arm(record, name), record["arms"][name], record["large"]["tokens"]["wide"]
    if decay == arm.weight_decay:  # the run measured it already
        return {"lr": entry["lr"], "final_eval_loss_by_lr": entry["tuning_eval_loss"], "start_eval_loss": entry["start_eval_loss"],
                "budget_eval_loss": {int(t): v for t, v in entry["budget_eval_loss"].items()}, "final_eval_loss": entry["final_eval_loss"]}
    model = bench.init_model("wide") if arm.grow is None else run / f"grown-{name}"
    lrs = sorted({float(lr) for lr in entry["tuning_eval_loss"]})
    folder = f"wd{decay:g}-{name}"
    wind = bench.tune(model, replace(arm, weight_decay=decay), folder, lrs, budget, C.BRANCHES)
    curve = C.rate_curve(wind, wind["best_lr"])
    return {"lr": wind["best_lr"], "final_eval_loss_by_lr": {rate: by[str(budget)] for rate, by in wind["eval_loss"].items()},
            "start_eval_loss": C._start(run / folder), "budget_eval_loss": curve, "final_eval_loss": curve[budget]}


def speedup(grown: dict, random_init: dict, record: dict) -> dict:
    """The grown arm against the random init's final loss, counted with and without the small model."""
    import convergence as C

    entry = dict(grown)
    C.wide_speedups(entry, random_init["budget_eval_loss"], record)
    return {key: entry[key] for key in ("speedup", "speedup_including_small", "speedup_is_lower_bound", "speedup_from_head_start")}


def main() -> None:
    import convergence as C

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a convergence.py --out directory with the key pair's arms")
    ap.add_argument("--decays", default="0,0.1,0.3", help="weight decays to train each arm at (its run's own is read back)")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/weight_decay-<corpus>.json")
    args = ap.parse_args()

    record, bench = C.finished_run(args.run)
    started = time.perf_counter()
    own = {name: C.recorded_arm(record, name).weight_decay for name in KEY_PAIR}
    decays = sorted({*own.values(), *map(float, args.decays.split(","))})
    points = [(name, decay) for decay in decays for name in KEY_PAIR]
    found = C._in_pool(bench, [(_tunnel, args.run, record, bench, name, decay) for name, decay in points])
    arms = {name: {f"{decay:g}": entry for (n, decay), entry in zip(points, found) if n == name} for name in KEY_PAIR}
    for name, by in arms.items():
        print(f"{name}: " + ", ".join(f"wd {d}: lr {e['lr']:.3g} -> {e['final_eval_loss']:.4f}" for d, e in by.items()), flush=True)
    best = {name: min(by, key=lambda d: by[d]["final_eval_loss"]) for name, by in arms.items()}
    at_best = speedup(arms["hyperclone_noise"][best["hyperclone_noise"]], arms["random_init"][best["random_init"]], record)
    shared = {d: speedup(arms["hyperclone_noise"][d], arms["random_init"][d], record) for d in arms["random_init"]}
    print(f"x2 width, each arm at its best weight decay ({best['random_init']} from scratch, {best['hyperclone_noise']} grown): "
          f"{at_best['speedup'] or 0:.2f}x (the run's own: {record['arms']['hyperclone_noise']['speedup']:.2f}x); at a shared "
          "decay: " + ", ".join(f"wd {d}: {s['speedup'] or 0:.2f}x" for d, s in shared.items()))
    result = C.probe_result("weight_decay", record, args.run, started, run_speedup=record["arms"]["hyperclone_noise"]["speedup"],
                            run_weight_decay=own,
                            best_weight_decay=best, speedup_at_best=at_best, speedup_at_shared_decay=shared, arms=arms)
    C.emit_probe(result, record, args.record)


if __name__ == "__main__":
    main()
