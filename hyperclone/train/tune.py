"""MiniCPM's model wind tunnel for the learning rate: short WSD runs over a grid of peak learning rates.

A WSD run's final loss at budget B only depends on its stable phase up to (1 - decay) * B and the
decay after it, so one constant-LR run per learning rate, checkpointed at every branch point, plus a
short decay branch per budget gives the final loss at every budget for little more than the cost of
the largest (MiniCPM, section 4). The best learning rate at the full budget becomes a training recipe;
the losses at the smaller budgets say how many tokens each learning rate needs to reach a loss.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from hyperclone.errors import UserError
from hyperclone.io.guard import TUNE_MARKER, check_replaceable, refuse_overlap
from hyperclone.io.resolve import resolve_source
from hyperclone.progress import stderr, token_progress
from hyperclone.train.config import TrainConfig, make_config
from hyperclone.train.loop import train
from hyperclone.train.plots import plot_lr_sweep
from hyperclone.train.metrics import read_metrics

DEFAULT_BUDGETS = (1, 2, 4, 8)  # in eighths of the budget: 1/8, 1/4, 1/2 and all of it
LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the default grid around the recipe's learning rate


@dataclass(frozen=True)
class Branches:
    """Where the stable run is checkpointed and how long each decay branch from there runs, in steps.

    Budgets are whole multiples of `unit` steps, so their branch points are multiples of one
    checkpoint interval (`save_every`) and the stable run's periodic checkpoints land on every one."""

    unit: int
    save_every: int
    budgets: tuple[int, ...]  # multiples of unit

    @classmethod
    def plan(cls, total_steps: int, budgets: tuple[int, ...], decay_fraction: float) -> "Branches":
        unit = total_steps // max(budgets)
        save_every = unit - round(decay_fraction * unit)
        if unit < 2 or save_every < 1 or save_every == unit:
            raise UserError(f"a budget of {total_steps} steps is too short to branch {max(budgets)} ways with "
                            f"--decay-fraction {decay_fraction}: give more --budget-tokens")
        return cls(unit, save_every, tuple(sorted(budgets)))

    def steps(self, k: int) -> int:
        return k * self.unit

    def branch_at(self, k: int) -> int:
        return k * self.save_every

    def decay_steps(self, ks) -> int:
        """Steps of the decay branches for budgets `ks`."""
        return sum(self.steps(k) - self.branch_at(k) for k in ks)

    def run_steps(self, ks=None) -> int:
        """Steps trained per learning rate: the stable run and the decay branches (every budget's, or `ks`')."""
        return self.branch_at(max(self.budgets)) + self.decay_steps(self.budgets if ks is None else ks)


def _grid(lrs, base: float) -> list[float]:
    values = sorted({float(x) for x in lrs}) if lrs else [base * f for f in LR_FACTORS]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--lrs must be positive numbers, got {lrs!r}")
    return values


def _prepare(out: Path, model: Path, force: bool) -> None:
    """The tune directory: new, or (with --force) one hyperclone tune wrote, whose runs are its own."""
    refuse_overlap(out, [model], "the model being tuned")
    if out.exists() and any(out.iterdir()):
        if not force:
            what = "results" if (out / "tune.json").exists() else "an unfinished tune"
            raise UserError(f"{out} already holds {what}: pass --force to tune again there, or another -o")
        check_replaceable(out, "tune")
        runs = out / "runs"
        folders = [runs] if runs.is_symlink() or runs.is_file() else sorted(runs.iterdir()) if runs.is_dir() else []
        for folder in folders:  # runs/lr-X/{stable,budget-K}: each one of train's run directories
            if folder.is_symlink() or not folder.is_dir():
                raise UserError(f"{folder} is not a folder hyperclone tune wrote: --force will not delete it; "
                                "move it away yourself or choose another -o")
            for run in sorted(folder.iterdir()):
                check_replaceable(run, "run")
        shutil.rmtree(out / "runs", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / TUNE_MARKER).write_text(json.dumps({"kind": "tune"}) + "\n")


def _final_eval(run: Path) -> float:
    return [r["eval_loss"] for r in read_metrics(run / "metrics.jsonl") if "eval_loss" in r][-1]


def _one_lr(base: TrainConfig, lr: float, seed: int, branches: Branches, ks, warmup: int, folder: Path,
            done: Callable[[int], None]) -> dict[int, float]:
    """One stable run at `lr` and a decay branch per budget in `ks`: {budget steps: final eval loss}; `done(steps)` after each run."""
    common = _run_settings(base, lr, seed, warmup)
    train(make_config(**{**common, "out": str(folder / "stable"), "schedule": "constant", "max_steps": branches.branch_at(max(branches.budgets)),
                         "save_every": branches.save_every, "keep": max(branches.budgets), "eval_every": branches.save_every,
                         "eval_at_start": True}))
    done(branches.branch_at(max(branches.budgets)))
    return _decays(common, branches, ks, folder, done)


def _run_settings(base: TrainConfig, lr: float, seed: int, warmup: int) -> dict:
    split = base.seed if base.split_seed is None else base.split_seed  # one held-out set for every seed
    return {**base.as_dict(), "lr": lr, "seed": seed, "split_seed": split, "warmup": warmup, "progress": False, "force": True,
            "resume": False}


def _decays(common: dict, branches: Branches, ks, folder: Path, done: Callable[[int], None]) -> dict[int, float]:
    """A decay branch per budget in `ks` from the stable run in `folder`, which kept a checkpoint at every branch point."""
    losses = {}
    for k in ks:
        run = folder / f"budget-{k}"
        checkpoint = folder / "stable" / "checkpoints" / f"step-{branches.branch_at(k)}"
        train(make_config(**{**common, "out": str(run), "schedule": "wsd", "max_steps": branches.steps(k),
                             "decay_from": str(checkpoint), "save_every": 0, "eval_every": 0}))
        losses[branches.steps(k)] = _final_eval(run)
        done(branches.steps(k) - branches.branch_at(k))
    return losses


def tune(model: str | os.PathLike, data, out: str | os.PathLike | None = None, *, lrs=None, budget_tokens: int | None = None,
         budgets: tuple[int, ...] = DEFAULT_BUDGETS, budgets_at: str = "every", extend: int = 2, seeds: int = 1,
         weight_decays=None, decay_fractions=None, recipe: str | None = None, force: bool = False, **settings) -> dict:
    """Final eval loss over a grid of peak learning rates (and budgets); writes tune.json, tune.png and
    recipe.yaml (the recipe's settings with the best learning rate) into `out`.

    When the best lies at an edge of the grid, up to `extend` more learning rates are tried beyond it
    (a factor 2 apart), so a grid that missed the optimum does not hand back its edge as the answer.
    With `seeds` > 1 every learning rate runs at training seeds seed .. seed + seeds - 1 (another data
    order each, the same ones for every rate, so the comparison stays paired; one held-out split, drawn
    with `split_seed` or else the first seed, so the spread is the training's alone) and is judged by
    their mean: where the final loss is bumpy in the rate, one run per rate can hand back a lucky draw
    (from scratch at the convergence benchmark's size it moved up to 0.1 nats between seeds at one rate,
    benchmarks/results/lr_resolution-*.json).

    `weight_decays` and `decay_fractions` repeat the whole search (grid, extension, seeds) at every
    combination of them and keep the one with the lowest loss: a grown model starts from trained weights,
    which decoupled decay pulls towards zero, and on the convergence benchmark its best was weight decay 0
    and a decay over the last 40 % where random init's was 0.1 and 20 %
    (benchmarks/results/weight_decay-*.json, recipe_probe-*.json). The optimal rate moves with both, so
    each combination gets its own search rather than the best rate's.

    `budgets_at="best"` runs the budgets below the largest only at the best learning rate, after the
    search: the chosen rate's loss at every budget (how many tokens it needs to reach a loss) for the
    price of one decay branch per other rate, but no best rate per budget. Its losses are the ones
    "every" gives at that rate: the branches start from the same stable checkpoints."""
    if not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a whole number of runs per learning rate, at least 1; got {seeds!r}")
    if budgets_at not in ("every", "best"):
        raise UserError(f"--budgets-at is every or best, got {budgets_at!r}")
    source = str(model)
    model = resolve_source(source, "model")  # hf://org/name[@rev]: its snapshot, resolved once for every run
    base = make_config(recipe, model=str(model), data=data, **{**settings, "tuned_tokens": 0})
    options, searched = _settings(base, weight_decays, decay_fractions)
    tokens_per_step = base.tokens_per_step()
    total = budget_tokens // tokens_per_step if budget_tokens else base.max_steps
    branches = {key: Branches.plan(total, tuple(budgets), config.decay_fraction) for key, config in options.items()}
    grid = _grid(lrs, base.lr)
    full = next(iter(branches.values())).steps(max(budgets))  # every decay fraction's budgets are the same steps
    warmup = TrainConfig(**{**base.as_dict(), "max_steps": full}).warmup_steps()
    target = Path(out or f"{Path(source.split('@')[0]).name}-tune")
    created = not target.exists()
    _prepare(target, model, force)
    # per setting searched besides the rate, per learning rate, each seed's {budget steps: final eval loss}
    results: dict[str, dict[float, list[dict[int, float]]]] = {}
    first = tuple(sorted(budgets)) if budgets_at == "every" else (max(budgets),)  # what every rate runs
    later = tuple(k for k in sorted(budgets) if k not in first)  # what the best rate runs after the search
    total = sum(plan.run_steps(first) for plan in branches.values()) * len(grid) * seeds * tokens_per_step
    try:
        with token_progress("tune", total, base.progress) as advance:
            for key, config in options.items():
                _search(config, grid, extend, seeds, branches[key], first, warmup, target / "runs", advance,
                        results.setdefault(key, {}), _named(config, searched))
            key = min(results, key=lambda k: min(_at(results[k], full).values()))
            base = options[key]
            _branch_best(base, later, seeds, branches[key], warmup, target / "runs", advance, results[key], _named(base, searched))
    except BaseException:
        if created and not any(results.values()):  # bad data or settings: leave nothing that a retry would need --force for
            shutil.rmtree(target, ignore_errors=True)
        raise
    return _report(results, key, options, searched, branches[key], tokens_per_step, target, budgets_at)


# the settings `tune` can search besides the learning rate: (option, words, folder tag)
AXES = {"weight_decay": ("--weight-decays", "weight decay", "wd"), "decay_fraction": ("--decay-fractions", "decay fraction", "df")}


def _settings(base: TrainConfig, weight_decays, decay_fractions) -> tuple[dict[str, TrainConfig], tuple[str, ...]]:
    """Every combination of the settings searched besides the rate, keyed "weight_decay=0,decay_fraction=0.4"
    (by the searched ones only; "" when none is), and the names of those searched."""
    given = {"weight_decay": _values(weight_decays, "weight_decay", lambda v: v >= 0, "numbers >= 0"),
             "decay_fraction": _values(decay_fractions, "decay_fraction", lambda v: 0 < v < 1, "fractions between 0 and 1")}
    searched = tuple(name for name, values in given.items() if values is not None)
    combos = itertools.product(*(given[name] or [getattr(base, name)] for name in AXES))
    options = [replace(base, **dict(zip(AXES, combo))) for combo in combos]
    return {",".join(f"{name}={getattr(c, name):g}" for name in searched): c for c in options}, searched


def _values(given, name: str, valid: Callable[[float], bool], what: str) -> list[float] | None:
    """One searched setting's values, sorted, or None when it is not searched."""
    if given is None:
        return None
    try:
        values = sorted({float(x) for x in given})
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(v) and valid(v) for v in values):
        raise UserError(f"{AXES[name][0]} must be {what}, got {given!r}")
    return values


def _named(config: TrainConfig, searched: tuple[str, ...]) -> tuple[str, str]:
    """A searched combination in words (for messages) and as a folder tag ("-wd-0-df-0.4"); empty when none is searched."""
    words = ", ".join(f"{AXES[name][1]} {getattr(config, name):g}" for name in searched)
    return words, "".join(f"-{AXES[name][2]}-{getattr(config, name):g}" for name in searched)


def _at(by_lr: dict[float, list[dict[int, float]]], steps: int) -> dict[float, float]:
    """Each learning rate's mean final eval loss at `steps`."""
    return {lr: _mean(runs)[steps] for lr, runs in by_lr.items()}


def _search(base: TrainConfig, grid: list[float], extend: int, seeds: int, branches: Branches, ks, warmup: int, runs: Path,
            advance: Callable[..., None], results: dict[float, list[dict[int, float]]], named: tuple[str, str] = ("", "")) -> None:
    """Every learning rate of the grid, at budgets `ks`, into `results`, then up to `extend` more past the edge
    the best sits on; `advance(tokens, more_tokens)` moves the bar and grows its total. `named`: the
    combination of searched settings this is, in the messages and the run folders (see `_named`)."""
    full, per_step = branches.steps(max(branches.budgets)), base.tokens_per_step()
    while grid:
        for lr in grid:
            stderr.print(f"tune: lr {lr:.3g}" + (f", {named[0]}" if named[0] else "")
                         + f": a stable run and {len(ks)} decay branch{'es' if len(ks) > 1 else ''}"
                         + (f", at seeds {', '.join(map(str, _seeds(base, seeds)))}" if seeds > 1 else ""), highlight=False)
            results[lr] = [_one_lr(base, lr, seed, branches, ks, warmup, _folder(runs, lr, seed, seeds, named[1]),
                                   lambda steps: advance(steps * per_step)) for seed in _seeds(base, seeds)]
            _say_losses(results[lr], seeds, per_step)
        grid = _beyond_edge({lr: _mean(runs) for lr, runs in results.items()}, full) if extend > 0 and len(results) > 1 else []
        advance(0, branches.run_steps(ks) * per_step * len(grid) * seeds)
        extend -= 1


def _branch_best(base: TrainConfig, ks, seeds: int, branches: Branches, warmup: int, runs: Path,
                 advance: Callable[..., None], results: dict[float, list[dict[int, float]]], named: tuple[str, str] = ("", "")) -> None:
    """The decay branches for budgets `ks` at the best learning rate only, from its stable runs' checkpoints."""
    if not ks:
        return
    full, per_step = branches.steps(max(branches.budgets)), base.tokens_per_step()
    best = _best({lr: _mean(runs) for lr, runs in results.items()}, full)
    stderr.print(f"tune: lr {best:.3g}" + (f", {named[0]}" if named[0] else "")
                 + f", the best: {len(ks)} more decay branch{'es' if len(ks) > 1 else ''}", highlight=False)
    advance(0, branches.decay_steps(ks) * per_step * seeds)
    for seed, losses in zip(_seeds(base, seeds), results[best]):
        losses.update(_decays(_run_settings(base, best, seed, warmup), branches, ks, _folder(runs, best, seed, seeds, named[1]),
                              lambda steps: advance(steps * per_step)))
    results[best] = [dict(sorted(losses.items())) for losses in results[best]]
    _say_losses(results[best], seeds, per_step)


def _seeds(base: TrainConfig, seeds: int) -> list[int]:
    return [base.seed + i for i in range(seeds)]


def _folder(runs: Path, lr: float, seed: int, seeds: int, tag: str = "") -> Path:
    """One level under runs/ whatever is searched, so --force finds train's run folders where it looks."""
    return runs / (f"lr-{lr:.3g}{tag}" + (f"-seed-{seed}" if seeds > 1 else ""))


def _say_losses(runs: list[dict[int, float]], seeds: int, per_step: int) -> None:
    stderr.print(f"  final eval loss{' (mean)' if seeds > 1 else ''} "
                 + ", ".join(f"{loss:.4f} at {s * per_step:,} tokens" for s, loss in _mean(runs).items()), highlight=False)


def _best(results: dict[float, dict[int, float]], steps: int) -> float:
    """The learning rate whose mean final eval loss at `steps` is lowest: the one the branches and the report both name."""
    return min(results, key=lambda lr: results[lr][steps])


def _mean(runs: list[dict[int, float]]) -> dict[int, float]:
    """The seeds' mean final eval loss at every budget."""
    return {steps: statistics.fmean(run[steps] for run in runs) for steps in runs[0]}


def _beyond_edge(results: dict[float, dict[int, float]], full: int) -> list[float]:
    """One more learning rate past the edge the best sits on, or none when the best is inside."""
    ordered = sorted(results)
    best = min(ordered, key=lambda lr: results[lr][full])
    return [best * 2] if best == ordered[-1] else [best / 2] if best == ordered[0] else []


def _report(results: dict[str, dict[float, list[dict[int, float]]]], chosen: str, options: dict[str, TrainConfig],
            searched: tuple[str, ...], branches: Branches, tokens_per_step: int, out: Path, budgets_at: str) -> dict:
    """tune.json, recipe.yaml and tune.png; every per-rate field is the chosen combination's."""
    base, full = options[chosen], branches.steps(max(branches.budgets))
    by_seed = results[chosen]
    means = {lr: _mean(runs) for lr, runs in by_seed.items()}
    everywhere = [steps for steps in map(branches.steps, branches.budgets) if all(steps in by for by in means.values())]
    by_budget = {steps: _best(means, steps) for steps in everywhere}
    best = by_budget[full]
    if len(means) > 1 and _beyond_edge(means, full):
        warnings.warn(f"the best learning rate {best:.3g} is at the edge of the grid: the optimum may lie beyond it; "
                      "extend --lrs", UserWarning, stacklevel=3)
    summary = {
        "model": base.model, "data": base.data, "optimizer": base.optimizer, "best_lr": best, "best_eval_loss": means[best][full],
        "budget_tokens": full * tokens_per_step, "warmup": base.warmup, "decay_fraction": base.decay_fraction,
        "budgets_tokens": [branches.steps(k) * tokens_per_step for k in branches.budgets], "budgets_at": budgets_at,
        # at the budgets every learning rate ran (with budgets_at "best", the full one alone). The optimum moves
        # with the budget (on the convergence benchmark, 4x after growth between a quarter of the budget and
        # all of it), so the recipe is only right for the budget it was tuned at
        "best_lr_by_budget": {str(steps * tokens_per_step): lr for steps, lr in by_budget.items()},
        "eval_loss": {f"{lr:.6g}": {str(steps * tokens_per_step): loss for steps, loss in by.items()} for lr, by in means.items()},
        # the mean above over these runs, each at its own training seed (base.seed onwards)
        "seeds": len(next(iter(by_seed.values()))), "seed": base.seed,
        "eval_loss_by_seed": {f"{lr:.6g}": {str(steps * tokens_per_step): [run[steps] for run in runs] for steps in runs[0]}
                              for lr, runs in by_seed.items()},
        "recipe": str(out / "recipe.yaml"), "plot": str(out / "tune.png"), "weight_decay": base.weight_decay,
    }
    finals = {key: _at(by_lr, full) for key, by_lr in results.items()}
    if searched:  # each combination's own search, at the full budget
        summary["searched"] = list(searched)
        summary["settings"] = {key: {**{name: getattr(options[key], name) for name in searched}, "best_lr": min(by, key=by.get),
                                     "eval_loss": {f"{lr:.6g}": v for lr, v in by.items()}} for key, by in finals.items()}
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_recipe(out / "recipe.yaml", base, best, full, summary, _named(base, searched)[0])
    others = {_named(options[key], searched)[0]: by for key, by in finals.items() if key != chosen}
    plot_lr_sweep({lr: {steps * tokens_per_step: loss for steps, loss in by.items()} for lr, by in means.items()}, best,
                  out / "tune.png", {lr: [run[full] for run in runs] for lr, runs in by_seed.items()} if summary["seeds"] > 1 else None,
                  others or None, _named(base, searched)[0])
    return summary


def _searched_values(summary: dict) -> str:
    """What a search covered besides the rate, in words: "weight decay 0, 0.1 x decay fraction 0.2, 0.4"."""
    return " x ".join(f"{AXES[name][1]} {', '.join(f'{v:g}' for v in sorted({s[name] for s in summary['settings'].values()}))}"
                      for name in summary["searched"])


def _write_recipe(path: Path, base: TrainConfig, lr: float, steps: int, summary: dict, chosen: str) -> None:
    """The best learning rate with the budget it was found at: `train` warns when a run's budget is far from it."""
    lines = ["kind: training",
             f"description: chosen by hyperclone tune, best final eval loss {summary['best_eval_loss']:.4f}"
             + (f" (mean of {summary['seeds']} seeds)" if summary["seeds"] > 1 else "") + " at "
             f"{summary['budget_tokens']:,} tokens over learning rates {', '.join(summary['eval_loss'])}"
             + (f" and {_searched_values(summary)} (best {chosen})" if "settings" in summary else ""),
             f"optimizer: {base.optimizer}", f"lr: {lr:.6g}", "schedule: wsd", f"warmup: {base.warmup}",
             f"decay_fraction: {base.decay_fraction}", f"decay_shape: {base.decay_shape}", f"weight_decay: {base.weight_decay}",
             f"seq_len: {base.seq_len}", f"batch_size: {base.batch_size}", f"grad_accum: {base.grad_accum}",
             f"max_steps: {steps}", f"tuned_tokens: {summary['budget_tokens']}"]
    path.write_text("\n".join(lines) + "\n")
