"""Is the wind tunnel's grid fine enough to compare arms? A probe on a finished convergence run.

`convergence.py` tunes every arm over learning rates a factor of 2 apart, so an arm whose best rate falls
between two grid points is measured up to a few hundredths of a nat above what it could reach, and a
speedup measured against it moves with the grid, not with growth. This probe takes a `convergence.py --out
DIR` run and tunes its key pair (random init and x2 width with noise) again at the geometric midpoints either
side of each one's best rate (best / sqrt 2, best x sqrt 2), same data, schedule and decay branches, the
wind tunnel extending past the better midpoint when it is an edge, as it does for every arm; then it
recomputes the speedup with each arm at its best rate over all the rates tried. If random init gains more
than the grown model, the factor-2 figure flattered growth.

One run per rate has its own bias: the more rates an arm tries, the likelier one of them is a lucky draw, and
an arm whose loss against the rate is bumpy gains most from that. With `--seeds N` every rate next to each
arm's best (a factor sqrt 2 either side) runs N seeds (a seed varies the initialisation or the noise, as
the benchmark's second-seed arms do; data order and eval set stay), each arm's rate is chosen by its mean
over seeds, moving outwards while the best mean sits at an edge, and the speedup is taken between the mean
curves; the spread is every seed of one arm against every seed of the other.

    python benchmarks/lr_resolution.py RUN_DIR [--seeds N] [--record]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

KEY_PAIR = ("random_init", "hyperclone_noise")
STEP = 2**0.5  # the finer grid's ratio


def finer(run: Path, record: dict, bench, name: str) -> dict:
    """One arm over its factor-2 grid plus the two midpoints around its best: every rate's final loss, the best's curve."""
    import convergence as C

    arm, budget = record["arms"][name], record["large"]["tokens"]["wide"]
    if not (run / f"finer-{name}" / "tune.json").exists():  # a finished probe's runs are read back, not trained again
        bench.tune(_model(run, record, bench, name, 0), C.recorded_arm(record, name), f"finer-{name}", [arm["lr"] / STEP, arm["lr"] * STEP],
                   budget, C.BRANCHES, budgets_at="every")
    wind = json.loads((run / f"finer-{name}" / "tune.json").read_text())
    curves = {float(lr): {int(t): loss for t, loss in by.items()} for lr, by in wind["eval_loss"].items()}
    curves[arm["lr"]] = {int(t): loss for t, loss in arm["budget_eval_loss"].items()}
    final = {lr: curve[budget] for lr, curve in sorted(curves.items())}
    final.update({float(lr): loss for lr, loss in arm["tuning_eval_loss"].items()})
    best = min(curves, key=lambda lr: curves[lr][budget])
    return {"final_eval_loss_by_lr": {f"{lr:.3g}": loss for lr, loss in sorted(final.items())}, "lr": best, "start_eval_loss": arm["start_eval_loss"],
            "budget_eval_loss": curves[best], "final_eval_loss": curves[best][budget], "factor2_lr": arm["lr"],
            "factor2_final_eval_loss": arm["final_eval_loss"]}


def _curves(tuned: dict, budget: int) -> dict[str, tuple[float, dict[int, float]]]:
    """Every rate of a finished tune (its tune.json) at the arm's whole budget: its curve (final eval loss by
    budget) and the rate itself, keyed as the runs' folders are (3 digits, so that rates a factor sqrt 2
    apart computed two ways meet)."""
    whole = set(map(str, tuned["budgets_tokens"]))  # a rate that ran every budget (convergence.py branches the best rate only)
    return {f"{float(lr):.3g}": (float(lr), {int(t): loss for t, loss in by.items()}) for lr, by in tuned["eval_loss"].items()
            if str(budget) in by and set(by) == whole}


def _model(run: Path, record: dict, bench, name: str, seed: int) -> Path:
    """The arm's starting model at `seed`, named as convergence.py names its seed arms (reused when present)."""
    import hyperclone

    if name == "random_init":
        return bench.init_model("wide", seed)
    grown = run / ("grown-hyperclone_noise" + (f"_seed{seed}" if seed else ""))
    if not (grown / "config.json").exists():
        small = bench.small_final(record["small"]["lr"])
        hyperclone.grow(small, {**record["arms"][name]["grow"], "seed": seed}, grown, force=True, progress=False)
        assert hyperclone.verify(small, grown)["passed"], f"{grown.name} does not preserve the function"
    return grown


def _near(lr: float, known: dict[str, float]) -> dict[str, float]:
    """A rate and its neighbours on the finer grid, keyed as the runs' folders are. A rate one of the run's
    tunnels used keeps the float it ran at: the sqrt-2 point as tune.json keeps it (0.00565685) x sqrt 2 is
    0.00799999..., and a chaotic run there is another draw, not the run at 0.008. Until stop 43 it was
    computed, so the records of stop 42 hold such draws at grid rates (seed 0 at 8e-3 from scratch on both
    corpora: 1.5551 where the tunnel had 1.5630 on stdlib code); none is at a rate the probe chose, and with
    the tunnel's loss none would have been."""
    return {key: known.get(key, r) for key, r in ((f"{r:.3g}", r) for r in (lr / STEP, lr, lr * STEP))}


def seeded(run: Path, record: dict, bench, name: str, seeds: int) -> dict:
    """One arm's curves at `seeds` seeds for every rate next to its best mean. Seed 0's come from its tunnels
    and seed 1's from the benchmark's second-seed arm where they exist; a finished (seed, rate) run of this
    probe is read back rather than trained again, so an interrupted probe resumes."""
    budget = record["large"]["tokens"]["wide"]
    runs: dict[int, dict[str, tuple[float, dict[int, float]]]] = {seed: {} for seed in range(seeds)}
    known: dict[str, float] = {}  # every rate any of the run's tunnels used, even one without every budget
    for seed, done in [(0, f"tune-{name}"), (0, f"finer-{name}")] + [(s, f"measure-{name}_seed{s}") for s in range(1, seeds)]:
        if (run / done / "tune.json").exists():
            tuned = json.loads((run / done / "tune.json").read_text())
            runs[seed].update(_curves(tuned, budget))
            known.update({f"{float(lr):.3g}": float(lr) for lr in tuned["eval_loss"]})
    around = _near(min((lr for lr, _ in runs[0].values()), key=lambda lr: runs[0][f"{lr:.3g}"][1][budget]), known)
    while True:  # outwards while the best mean sits at an edge of the rates run
        _run_missing(run, record, bench, name, around, runs)
        curves = [{key: runs[s][key][1] for key in around} for s in range(seeds)]
        mean = {key: statistics.fmean(c[key][budget] for c in curves) for key in sorted(around, key=float)}
        best = min(mean, key=mean.get)
        if best not in (next(iter(mean)), list(mean)[-1]):
            break
        around.update(_near(runs[0][best][0], known))
    mean_curve = {t: statistics.fmean(c[best][t] for c in curves) for t in curves[0][best]}
    # where the arm starts: seed 0's model (a grown model's seeds start within float rounding of each other)
    return {"lr": runs[0][best][0], "start_eval_loss": record["arms"][name]["start_eval_loss"],
            "final_eval_loss_by_lr_and_seed": {key: [c[key][budget] for c in curves] for key in mean},
            "mean_final_eval_loss_by_lr": mean, "budget_eval_loss": mean_curve, "final_eval_loss": mean_curve[budget],
            "by_seed": [c[best] for c in curves]}


def _run_missing(run: Path, record: dict, bench, name: str, rates: dict[str, float], runs: dict) -> None:
    """Every seed at every rate into `runs`: read back when this probe ran it before, else trained."""
    import convergence as C

    budget = record["large"]["tokens"]["wide"]
    for seed, (key, lr) in ((s, r) for s in runs for r in rates.items()):
        out = run / f"seeds-{name}" / f"seed{seed}-lr{key}"
        if key not in runs[seed] and not (out / "tune.json").exists():
            bench.tune(_model(run, record, bench, name, seed), C.recorded_arm(record, name), str(out.relative_to(run)), [lr], budget, C.BRANCHES)
        if key not in runs[seed]:
            runs[seed].update(_curves(json.loads((out / "tune.json").read_text()), budget))


def seed_speedups(arms: dict, record: dict) -> dict:
    """The mean curves' speedup, and the spread over every pairing of one grown seed with one random-init seed."""
    import convergence as C

    budget = record["large"]["tokens"]["wide"]
    grown, random_init = arms["hyperclone_noise"], arms["random_init"]
    C.wide_speedups(grown, random_init["budget_eval_loss"], record)
    pairs = []
    for curve in grown["by_seed"]:
        for target in random_init["by_seed"]:
            reached = C.tokens_to_reach(curve, target[budget])[0]
            pairs.append(None if reached is None else budget / reached)
    return {"speedup": grown["speedup"], "speedup_including_small": grown["speedup_including_small"],
            "speedup_pairs": pairs, "arms": arms}


def main() -> None:
    import convergence as C

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a convergence.py --out directory with the key pair's arms")
    ap.add_argument("--seeds", type=int, default=1, help="with N > 1, also choose each arm's rate by its mean over N seeds")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/lr_resolution-<corpus>.json")
    args = ap.parse_args()

    record, bench = C.finished_run(args.run)
    started = time.perf_counter()
    arms = {name: finer(args.run, record, bench, name) for name in KEY_PAIR}
    grown = arms["hyperclone_noise"]
    C.wide_speedups(grown, arms["random_init"]["budget_eval_loss"], record)
    result = C.probe_result("lr_resolution", record, args.run, started, factor2_speedup=record["arms"]["hyperclone_noise"]["speedup"],
                            speedup=grown["speedup"], speedup_including_small=grown["speedup_including_small"], arms=arms)
    for name, arm in arms.items():
        print(f"{name}: factor-2 grid {arm['factor2_lr']:.3g} -> {arm['factor2_final_eval_loss']:.4f}; finer {arm['lr']:.3g} -> "
              f"{arm['final_eval_loss']:.4f}", flush=True)
    print(f"x2 width speedup: {result['factor2_speedup']:.2f}x on the factor-2 grid, {result['speedup'] or 0:.2f}x on the finer one")
    if args.seeds > 1:
        result["seeds"] = seed_speedups({name: seeded(args.run, record, bench, name, args.seeds) for name in KEY_PAIR}, record)
        reached = [p for p in result["seeds"]["speedup_pairs"] if p is not None]
        print(f"x2 width speedup over {args.seeds} seeds: {result['seeds']['speedup'] or 0:.2f}x between the mean curves, "
              f"{min(reached, default=0):.2f}x to {max(reached, default=0):.2f}x seed against seed "
              f"({len(reached)} of {len(result['seeds']['speedup_pairs'])} pairs reach the target)")
        result["minutes"] = round((time.perf_counter() - started) / 60, 1)
    C.emit_probe(result, record, args.record)


if __name__ == "__main__":
    main()
