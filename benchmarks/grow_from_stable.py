"""Grow from the small model's decayed end, or from its stable phase before the decay?

`convergence.py` grows the small model after its WSD decay, where its loss is lowest. But the grown model is
trained at a high learning rate again, and what the decay bought may not survive that: the convergence
records' grown models gain almost nothing over their first eighth of a budget, while random init shifted
by the head start would. This benchmark measures it on the convergence benchmark's default sizes and
data split: the small model pretrained as there (its wind tunnel, 100 tokens per parameter, WSD), then
x2 width with the default noise grown from three checkpoints of it, each arm tuned over the same grid and
run at two noise seeds, against random init (tuned, two seeds), the same budget:

- `decayed`: the end of the WSD run, what convergence.py grows (all of the small model's compute);
- `before_decay`: the same run's constant-rate phase where its decay begins (80 % of the compute);
- `constant`: a constant-rate run as long as the WSD run (all of the compute, no decay).

Per arm: the speedup between mean curves, counting the small model's compute actually spent, and the head
start (convergence.head_start) with what the arm made of it. If the decay's gain is lost after growth, the
decayed arm's head start overstates what it gets, and a small model meant for growth can skip its decay.

    python benchmarks/grow_from_stable.py [--data PATH] [--out DIR] [--seeds 2] [--record]
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


def starts(bench, small: Path, report: dict) -> dict[str, tuple[Path, float]]:
    """Each arm's small checkpoint and the share of the WSD run's compute it cost."""
    import hyperclone

    before_decay = small.parent.parent / "stable" / "final"  # the wind tunnel's stable run ends where the decay branches
    steps = report["tokens"] // bench.tokens_per_step
    constant = bench.work / "small-constant"
    if not (constant / "final" / "config.json").exists():
        hyperclone.train(model=str(bench.work / "small-init"), data=str(bench.pretrain), out=str(constant), lr=report["lr"],
                         schedule="constant", max_steps=steps, warmup=round(0.05 * steps), seed=0, optimizer="adamw", force=True,
                         save_every=0, eval_every=0, **bench.common)
    import convergence as C
    from hyperclone.train.tune import Branches

    stable = Branches.plan(steps, (max(C.BRANCHES),), bench.common["decay_fraction"]).branch_at(max(C.BRANCHES))
    return {"decayed": (small, 1.0), "before_decay": (before_decay, stable / steps), "constant": (constant / "final", 1.0)}


def arm(bench, settings, make, lrs, budget: int, seeds: int) -> dict:
    """Tune `settings` (a convergence.Arm) at seed 0 over `lrs`, run seeds 1.. at the best rate; the mean
    curve and each seed's."""
    import convergence as C

    name = settings.name
    wind = bench.tune(make(0), settings, f"tune-{name}", lrs, budget, C.BRANCHES)
    lr = wind["best_lr"]
    curves = [C.rate_curve(wind, lr)]
    for seed in range(1, seeds):
        more = bench.tune(make(seed), settings, f"measure-{name}-seed{seed}", [lr], budget, C.BRANCHES)
        curves.append(C.rate_curve(more, lr))
    mean = {t: statistics.fmean(c[t] for c in curves) for t in curves[0]}
    return {"lr": lr, "warmup": settings.warmup, "weight_decay": settings.weight_decay, "decay_fraction": settings.decay_fraction,
            "decay_shape": settings.decay_shape,
            "tuning_eval_loss": {r: by[str(budget)] for r, by in wind["eval_loss"].items()},
            "start_eval_loss": C._start(bench.work / f"tune-{name}"), "by_seed": curves, "budget_eval_loss": mean,
            "final_eval_loss": mean[budget]}


def run(data: Path | None, work: Path, seeds: int) -> dict:
    import convergence as C
    import hyperclone

    scale, began = C.Scale(), time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    bench = C.Bench(scale, work)
    shapes = bench.architectures()
    params = {a: sum(C._count(shapes[a])) for a in ("small", "wide")}
    budget = bench.budget(params["wide"])
    bench.split(data, params["small"])
    small, report = bench.pretrain_small(params["small"])
    # a grown arm trains with the after-growth recipe's warmup, weight decay and decay phase, random init with
    # train's defaults, as in convergence.py (the records before stop 43 trained every arm at weight decay 0.1;
    # today's records, of stop 43, decayed the grown arms over 20 % of the budget, as the recipe did then)
    random_init = arm(bench, C.Arm("random_init", "wide", None), lambda s: bench.init_model("wide", s), scale.lrs, budget, seeds)
    result = {"small": report, "budget": budget, "params": params, "random_init": random_init, "arms": {}}
    for name, (checkpoint, share) in starts(bench, small, report).items():
        def grown(seed: int, checkpoint=checkpoint, name=name) -> Path:
            out = hyperclone.grow(checkpoint, {"width": 2, "noise": scale.noise, "seed": seed}, work / f"grown-{name}-seed{seed}",
                                  force=True, progress=False)
            assert hyperclone.verify(checkpoint, out)["passed"], f"{name} does not preserve the function"
            return out

        entry = {"small_compute_share": share, **arm(bench, C.Arm(name, "wide", None, **C.after_growth()), grown, scale.lrs, budget, seeds)}
        C._speedups(entry, random_init["budget_eval_loss"], budget, share * report["tokens"] * params["small"] / params["wide"])
        result["arms"][name] = entry
    result["minutes"] = round((time.perf_counter() - began) / 60, 1)
    return result


def table(result: dict) -> str:
    rows = ["| grown from | small model's compute | start eval loss | final eval loss (mean) | speedup | incl. small | head start → alone gives | "
            "speedup ÷ head start's |", "|---|---|---|---|---|---|---|---|"]
    for name, a in result["arms"].items():
        alone = a["speedup_from_head_start"]
        rows.append(f"| {name} | {a['small_compute_share']:.0%} | {a['start_eval_loss']:.3f} | {a['final_eval_loss']:.4f} | {a['speedup'] or 0:.2f}x | "
                    f"{a['speedup_including_small'] or 0:.2f}x | {(a['head_start_tokens'] or 0) / result['budget']:.2f} → {alone or 0:.2f}x | "
                    f"{(a['speedup'] or 0) / alone if alone else 0:.2f} |")
    r = result["random_init"]
    return (f"random init: lr {r['lr']:.3g}, final eval loss {r['final_eval_loss']:.4f} (mean of {len(r['by_seed'])} seeds); "
            f"grown arms at the default noise, {len(r['by_seed'])} noise seeds each\n\n" + "\n".join(rows))


def main() -> None:
    from benchmarks_machine import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a corpus directory or file (default: the standard library's source)")
    ap.add_argument("--out", type=Path, default=Path("grow-from-stable-out"))
    ap.add_argument("--seeds", type=int, default=2, help="initialisation (random init) or noise (grown) seeds per arm")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/grow_from_stable-<corpus>.json")
    args = ap.parse_args()
    result = {"benchmark": "grow_from_stable", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "corpus": str(args.data) if args.data else "Python standard library source (.py, no tests), UTF-8 bytes as tokens",
              **run(args.data, args.out, args.seeds)}
    print(table(result))
    text = json.dumps(result, indent=2) + "\n"
    (args.out / "grow_from_stable.json").write_text(text)
    if args.record:
        (HERE / "results" / f"grow_from_stable-{args.data.name if args.data else 'stdlib'}.json").write_text(text)


if __name__ == "__main__":
    main()
