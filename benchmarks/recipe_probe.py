"""Which training settings spend the grown model's head start? A probe on a finished convergence run.

`convergence.py` trains its grown arms with the after-growth recipe and random init with hyperclone train's
defaults. This probe takes a `convergence.py --out DIR` run and tunes its key pair (random init and x2 width
with noise) again at other values of the settings a recipe fixes besides the learning rate: weight decay,
warmup, and the WSD decay's share and shape. `--set KEY=V1,V2` once per setting; every combination is
trained, each over the run's grid of learning rates (extended past an edge, as every arm's is), on the same
data and decay branches, and the run's own setting is read back rather than trained again. Then it takes
each arm at its best combination and rate and recomputes the speedup, and gives the speedup at every
combination both arms share. Random init gets the same choice as the grown model, so a setting that helps
both equally does not show up as growth paying.

What it found:
- weight decay (runs where every arm trained at 0.1, results/weight_decay-*.json, measured by this probe's
  predecessor weight_decay.py): without decay the grown model ends 0.0086 nats lower on stdlib code and
  0.0085 lower on English docs, more than its seeds spread; random init does best at 0.1 on both. So
  recipes/after-growth.yaml sets weight_decay 0, and convergence.py's grown arms train with it.
- the decay phase (results/recipe_probe-decay_fraction-decay_shape-*.json, 10 / 20 / 40 %, linear or 1-sqrt):
  the grown model ends lowest at 40 %, 0.008 nats below 20 % on stdlib code and 0.007 on English docs, at
  twice the rate; 1-sqrt is within 0.002 of linear; random init does best at 20 %. So the recipe decays
  over 40 %. The speedup with each arm at its best moves less (2.13x -> 2.16x, 2.14x -> 2.15x; on English
  docs the best was 1-sqrt, and the recipe's linear decay gives 2.12x): at the higher rate the shorter
  budgets end higher.

    python benchmarks/recipe_probe.py RUN_DIR --set decay_fraction=0.2,0.4 [--set decay_shape=linear,1-sqrt] [--record]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

KEY_PAIR = ("random_init", "hyperclone_noise")
SETTINGS = {"weight_decay": float, "warmup": float, "decay_fraction": float, "decay_shape": str}  # convergence.Arm's fields


def parse(sets: list[str]) -> dict[str, list]:
    """`--set KEY=V1,V2` options as {key: values}; ValueError says what is wrong with one."""
    from hyperclone.train.config import CHOICES

    found = {}
    for one in sets:
        key, _, values = one.partition("=")
        if key not in SETTINGS or not values:
            raise ValueError(f"--set takes KEY=V1,V2 with KEY one of {', '.join(SETTINGS)}; got {one!r}")
        try:
            found[key] = [SETTINGS[key](v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--set {key} takes numbers, got {values!r}") from None
        if key == "decay_shape" and not set(found[key]) <= set(CHOICES[key]):
            raise ValueError(f"--set decay_shape takes {', '.join(CHOICES[key])}; got {values!r}")
    if not found:
        raise ValueError("give at least one --set KEY=V1,V2")
    return found


def label(settings: dict) -> str:
    """One combination as the JSON keys and run folders name it: key=value joined by commas."""
    return ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in settings.items())


def _tunnel(run: Path, record: dict, bench, name: str, settings: dict) -> dict:
    """One arm at one combination: each rate's final loss, and the best rate's curve over the budgets."""
    import convergence as C

    arm, entry, budget = C.recorded_arm(record, name), record["arms"][name], record["large"]["tokens"]["wide"]
    if all(getattr(arm, key) == value for key, value in settings.items()):  # the run measured it already
        return {"lr": entry["lr"], "final_eval_loss_by_lr": entry["tuning_eval_loss"], "start_eval_loss": entry["start_eval_loss"],
                "budget_eval_loss": {int(t): v for t, v in entry["budget_eval_loss"].items()}, "final_eval_loss": entry["final_eval_loss"]}
    model = bench.init_model("wide") if arm.grow is None else run / f"grown-{name}"
    lrs = sorted({float(lr) for lr in entry["tuning_eval_loss"]})
    folder = f"probe-{label(settings).replace('=', '-').replace(',', '-')}-{name}"
    wind = bench.tune(model, replace(arm, **settings), folder, lrs, budget, C.BRANCHES)
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                    help=f"values to train each arm at, one option per setting ({', '.join(SETTINGS)}); the run's own is read back")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/recipe_probe-<keys>-<corpus>.json")
    args = ap.parse_args()
    try:
        asked = parse(args.set)
    except ValueError as error:
        ap.error(str(error))  # one line and exit 2

    record, bench = C.finished_run(args.run)
    started = time.perf_counter()
    own = {name: {key: getattr(C.recorded_arm(record, name), key) for key in asked} for name in KEY_PAIR}
    values = {key: sorted({*vs, *(own[name][key] for name in KEY_PAIR)}) for key, vs in asked.items()}
    combos = [dict(zip(values, one)) for one in itertools.product(*values.values())]
    points = [(name, combo) for combo in combos for name in KEY_PAIR]
    found = C._in_pool(bench, [(_tunnel, args.run, record, bench, name, combo) for name, combo in points])
    arms = {name: {label(combo): entry for (n, combo), entry in zip(points, found) if n == name} for name in KEY_PAIR}
    for name, by in arms.items():
        print(f"{name}: " + "; ".join(f"{key}: lr {e['lr']:.3g} -> {e['final_eval_loss']:.4f}" for key, e in by.items()), flush=True)
    best = {name: min(by, key=lambda key: by[key]["final_eval_loss"]) for name, by in arms.items()}
    at_best = speedup(arms["hyperclone_noise"][best["hyperclone_noise"]], arms["random_init"][best["random_init"]], record)
    shared = {key: speedup(arms["hyperclone_noise"][key], arms["random_init"][key], record) for key in arms["random_init"]}
    print(f"x2 width, each arm at its best ({best['random_init']} from scratch, {best['hyperclone_noise']} grown): "
          f"{at_best['speedup'] or 0:.2f}x (the run's own: {record['arms']['hyperclone_noise']['speedup']:.2f}x); at shared settings: "
          + "; ".join(f"{key}: {s['speedup'] or 0:.2f}x" for key, s in shared.items()), flush=True)
    result = C.probe_result("recipe_probe", record, args.run, started, run_speedup=record["arms"]["hyperclone_noise"]["speedup"],
                            run_settings=own, best=best, speedup_at_best=at_best, speedup_at_shared=shared, arms=arms)
    C.emit_probe(result, record, args.record, "-".join(asked))


if __name__ == "__main__":
    main()
