"""Does growth pay? Tokens a grown model needs to reach a randomly initialised model's final loss, in the
HyperCloning paper's regime: the small model trained to >= 100 tokens per parameter before growth, and
each large architecture's pair (random init, grown twin) for 20 tokens per parameter of that
architecture (Chinchilla's compute-optimal point), on data the small model never saw.

Every large arm gets its own learning rate from `hyperclone.tune` (MiniCPM's wind tunnel, at the arm's
whole budget unless --tune-share says less), measured the WSD way: a constant-LR run with decay branches
at 1/8 .. 8/8 of the budget, so "tokens to reach loss L" is the smallest WSD budget whose decayed end
reaches L (interpolated between branches) — not a point on a curve that only decays at its very end.

Arms on the x2-width architecture: random init (2 seeds), HyperCloning with noise (AdamW, 2 seeds),
exact copies, and the MuonClip pair (grown vs MuonClip random init); then x2 width + x2 depth and x2
depth only, each against its own random-init twin. Speedup = the twin's tokens / the arm's tokens to
reach the twin's final eval loss; `speedup_including_small` also counts the small model's pretraining
(its tokens x N_small / N_large); `head_start_tokens` is what the small model's training is worth in the
twin's tokens and `speedup_from_head_start` what that alone would give (see head_start). `--sizes` repeats
the key arms at three model sizes (or at the factors of the hidden size it is given); `--pretrain` at three lengths of the small model's pretraining (100,
300, 1000 tokens per parameter on CPU); `--warmups` the grown arm at four warmup fractions; `--noises` at
four noise scales. Every width arm also reports how far its copies came apart in training (`copies`: the
correlation of each FFN unit with its copy, 1 = still copies).

`--plan` trains nothing: it prints each model's parameters and budget and the run's forecast minutes on this
machine (every arm's steps, evals and runs, timed with a few steps of hyperclone's own training loop per
model, scheduled as the arms are). `--scale gpu` sizes itself the same way: the largest small model of
GPU_HIDDEN whose run is forecast to fit `--minutes` (default 10), at the full 100 / 20 tokens per parameter,
and whose data the corpus holds (the small model's pretraining never repeats, no arm passes over its text
more than MAX_EPOCHS times): that takes --data with far more text than the standard library's 11 MB, which
is short even for the smallest GPU size (a site-packages directory holds hundreds of MB).

    python benchmarks/convergence.py [--data PATH] [--scale cpu|gpu] [--sizes [F,F,...]] [--pretrain] [--warmups] [--noises]
                                      [--arms A,B] [--reserve N] [--minutes M] [--plan] [--json] [--out DIR] [--record]

Without --data the corpus is the running interpreter's standard library source (real text, no download).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

BRANCHES = (1, 2, 3, 4, 6, 8)  # WSD budgets measured per arm, in eighths of the full budget
DECAY = 0.2  # every WSD run's decay, a share of its budget


@dataclass(frozen=True)
class Scale:
    """Model and batch sizes of one run; budgets follow from the parameter counts."""

    hidden: int = 16
    ffn: int = 44
    layers: int = 4
    heads: int = 2
    seq: int = 128
    batch: int = 16
    small_tokens_per_param: int = 100
    large_tokens_per_param: int = 20
    lrs: tuple[float, ...] = (2e-3, 4e-3, 8e-3)  # the wind tunnel's grid for every model (extended past an edge)
    noise: float = 1.5  # hyperclone's default noise (targets.DEFAULT_NOISE), chosen by --noises and noise_beyond_cap.py
    # the wind tunnel's budget as a share of the arm's. 1: every grid point is a full WSD run with decay
    # branches, and the best one's branches are the arm's measurement. A shorter tunnel is cheaper but
    # biased both ways: it picks too high a rate from scratch and too low a rate after growth (measured:
    # results/convergence-wd0.1.md against convergence-tune0.25.md)
    tune_share: float = 1.0
    # --sizes: hidden (and ffn) x these; budgets grow with the parameters, so on 2 CPU cores the sweep
    # goes down from the main size (x2 would take 16x the main run's compute per arm), on a GPU up
    sweep: tuple[float, ...] = (0.5, 0.75, 1)
    # --pretrain: the small model's tokens per parameter before growth (key arms, at the smallest --sizes
    # size): the head start is worth what random init needs to reach the small model's loss, so this is
    # the lever the paper pulled (its small models saw hundreds of tokens per parameter)
    pretrain_sweep: tuple[int, ...] = (100, 300, 1000)
    # --warmups: the grown arm's warmup fraction (its learning rate tuned again for each), against the
    # default random init; the quick check saw the loss jump while the grown model re-warmed
    warmup_sweep: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5)
    # --noises: the grown arm's symmetry-breaking noise (its learning rate tuned again for each). The split
    # caps each copy's share at 3|w|/4 either side of w/2 (ops.split.SHARE_CAP), and the default 1.5 reaches
    # that cap for almost every weight; 0 gives exact copies
    noise_sweep: tuple[float, ...] = (0.0, 0.1, 0.5, 1.5)
    split_tokens_per_param: int | None = None  # pretraining bytes set aside (default: what the small model uses)
    eval_batches: int = 16  # held-out batches behind every eval loss (fewer in a --minutes run far below the default)
    # arms trained at once, each in its own process with torch's threads shared out: at these sizes a second
    # thread buys little (a training step on 2 cores: 24 steps/s at 2 threads, 2 x 17 at 1 thread each; the
    # default run 23.5 minutes against 41.7 with --jobs 1, results/convergence-jobs1.json)
    jobs: int = 2

    def small_config(self) -> dict:
        return dict(vocab_size=260, hidden_size=self.hidden, intermediate_size=self.ffn, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, num_key_value_heads=self.heads, max_position_embeddings=max(256, self.seq),
                    tie_word_embeddings=False)


GPU_HIDDEN = (64, 96, 128, 192, 256, 384, 512)  # --scale gpu: the small model's hidden sizes it chooses among
GPU_MINUTES = 10.0  # ... to fill about this much of the GPU by default

SCALES = {
    "cpu": Scale(),
    # the hidden size is chosen when the run starts (fit_scale: the largest of GPU_HIDDEN whose run is forecast
    # to fit --minutes on the GPU at hand); these fields fix the head size (32), FFN ratio, depth and batch
    "gpu": Scale(hidden=128, ffn=352, layers=6, heads=4, seq=256, batch=64, sweep=(1, 1.5, 2), pretrain_sweep=(100, 300), jobs=1),
}


@dataclass(frozen=True)
class Arm:
    name: str
    arch: str  # wide | wide_deep | deep
    grow: dict | None  # a growth target, or None for random init
    optimizer: str = "adamw"
    seed: int = 0
    baseline: str = "random_init"
    tune_as: str | None = None  # reuse another arm's tuned learning rate (the second seeds)
    warmup: float = 0.05  # WSD warmup, a fraction of the budget
    weight_decay: float = 0.1  # decoupled weight decay: hyperclone train's default, best from scratch (recipe_probe.py)
    decay_fraction: float = DECAY  # the WSD decay's share of the budget
    decay_shape: str = "linear"  # how the decay falls to zero (hyperclone train's decay_shape)


RECIPE = HERE.parent / "recipes" / "after-growth.yaml"


def after_growth() -> dict:
    """The warmup, weight decay and decay phase of the recipe the toolkit ships for training after growth:
    every grown arm trains with them, so the benchmark measures the product's recipe, not settings picked
    per run. Random init keeps hyperclone train's defaults."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    return {"warmup": float(recipe["warmup"]), "weight_decay": float(recipe["weight_decay"]),
            "decay_fraction": float(recipe["decay_fraction"]), "decay_shape": str(recipe["decay_shape"])}


def schedule() -> str:
    """The WSD settings each kind of arm trains with, as a record says them."""
    scratch, grown = Arm("", "", None), after_growth()

    def one(warmup: float, fraction: float, shape: str) -> str:
        return f"{warmup:.0%} warmup, {shape} decay over the last {fraction:.0%}"

    return (f"WSD: random init {one(scratch.warmup, scratch.decay_fraction, scratch.decay_shape)}, grown arms "
            f"{one(grown['warmup'], grown['decay_fraction'], grown['decay_shape'])} (recipes/after-growth.yaml); "
            "decay branches at 1/8 .. 8/8 of the budget")


def arms(noise: float, layers: int) -> list[Arm]:
    width, after = {"width": 2, "noise": noise}, after_growth()
    return [
        Arm("random_init", "wide", None),
        Arm("random_init_seed1", "wide", None, seed=1, tune_as="random_init"),
        Arm("hyperclone_noise", "wide", width, **after),
        Arm("hyperclone_noise_seed1", "wide", width, seed=1, tune_as="hyperclone_noise", **after),
        Arm("exact_copies", "wide", {"width": 2, "noise": 0}, **after),
        Arm("random_init_muonclip", "wide", None, "muonclip", baseline="random_init_muonclip"),
        Arm("hyperclone_noise_muonclip", "wide", width, "muonclip", baseline="random_init_muonclip", **after),
        Arm("random_init_width_depth", "wide_deep", None, baseline="random_init_width_depth"),
        Arm("hyperclone_width_depth", "wide_deep", {**width, "layers": 2 * layers}, baseline="random_init_width_depth", **after),
        Arm("random_init_depth", "deep", None, baseline="random_init_depth"),
        Arm("hyperclone_depth_only", "deep", {"layers": 2 * layers, "noise": noise}, baseline="random_init_depth", **after),
    ]


def documents(source: Path | None) -> list[str]:
    """The corpus as documents: the standard library's own .py files (no tests, no site-packages) by
    default; else every text file under `source` (a .jsonl file's lines' "text")."""
    if source is None:
        lib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in lib.rglob("*.py") if not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    else:
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    docs = []
    for f in files:
        raw = f.read_bytes()
        if b"\0" in raw[:4096]:
            continue  # binary
        text = raw.decode("utf-8", errors="replace")
        docs.extend(json.loads(line)["text"] for line in text.splitlines() if line.strip()) if f.suffix == ".jsonl" else docs.append(text)
    return [d for d in docs if d.strip()]


def split_corpus(source: Path | None, out: Path, first_bytes: int, rest_bytes: int | None = None) -> tuple[Path, Path, dict]:
    """Two disjoint .jsonl corpora: the small model's pretraining data, then the data every large arm
    continues on (at most about `rest_bytes` of it). A grown model trained again on its small model's data
    would see repeated tokens while random init sees fresh ones, which is not the comparison. Documents
    are shuffled once (seed 0) so both parts cover the same kinds of text."""
    import random

    docs = documents(source)
    random.Random(0).shuffle(docs)
    parts, sizes = ([], []), [0, 0]
    for doc in docs:
        part = 0 if sizes[0] < first_bytes else 1
        if part == 1 and rest_bytes is not None and sizes[1] >= rest_bytes:
            break  # text no arm will reach would only slow every run's data loading
        parts[part].append(doc)
        sizes[part] += len(doc.encode())
    paths = (out / "pretrain.jsonl", out / "continue.jsonl")
    for path, part in zip(paths, parts):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    unused = len(docs) - len(parts[0]) - len(parts[1])
    return *paths, {"documents": len(docs), "pretrain_bytes": sizes[0], "continue_bytes": sizes[1],
                    **({"unused_documents": unused} if unused else {})}


def tokens_to_reach(curve: dict[int, float], target: float) -> tuple[float | None, bool]:
    """Smallest WSD budget whose final loss reaches `target`, log-linear between measured budgets;
    and whether it is only a bound (the smallest budget measured already reaches it)."""
    points = sorted(curve.items())
    if points[0][1] <= target:
        return float(points[0][0]), True
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l1 <= target:
            share = (l0 - target) / (l0 - l1)
            return math.exp(math.log(t0) + share * (math.log(t1) - math.log(t0))), False
    return None, False


class Bench:
    """One benchmark run: models, the small model's pretraining, growth, and the arms' tune + measure."""

    def __init__(self, scale: Scale, work: Path):
        self.scale, self.work = scale, work
        self.pretrain = self.cont = work / "unset"
        self.tokens_per_step = scale.seq * scale.batch
        self.common = dict(seq_len=scale.seq, batch_size=scale.batch, eval_batches=scale.eval_batches, trackers="none", progress=False,
                           decay_fraction=DECAY)

    def random_model(self, name: str, config: dict, seed: int) -> Path:
        """transformers' own initialisation (what 'from scratch' means), saved as a checkpoint."""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        path = self.work / name
        if not (path / "config.json").exists():  # arms in parallel share one: written aside, renamed whole
            _clear_dead_asides(path)
            torch.manual_seed(seed)
            aside = path.with_name(f".{name}.{os.getpid()}")
            AutoModelForCausalLM.from_config(LlamaConfig(**config)).save_pretrained(aside)
            try:
                aside.rename(path)
            except OSError:  # another arm's process was first, with the same bytes
                shutil.rmtree(aside)
        return path

    def init_model(self, arch: str, seed: int = 0) -> Path:
        """An architecture's random init at `seed`, named and seeded in one place, so the arms, the forecast
        and the probes on a finished run all start from the very same checkpoint."""
        if arch == "small":
            return self.random_model("small-init", self.architectures()["small"], 0)
        return self.random_model(f"init-{arch}-seed{seed}", self.architectures()[arch], 1 + seed)

    def architectures(self) -> dict[str, dict]:
        small = self.scale.small_config()
        wide = {**small, "hidden_size": 2 * small["hidden_size"], "intermediate_size": 2 * small["intermediate_size"],
                "num_attention_heads": 2 * small["num_attention_heads"], "num_key_value_heads": 2 * small["num_key_value_heads"]}
        return {"small": small, "wide": wide, "wide_deep": {**wide, "num_hidden_layers": 2 * small["num_hidden_layers"]},
                "deep": {**small, "num_hidden_layers": 2 * small["num_hidden_layers"]}}

    def pretrain_small(self, n_small: int) -> tuple[Path, dict]:
        """The small model pretrained as a user of the toolkit would: its learning rate from the wind tunnel
        at its own budget, like every large arm's. A hand-picked rate (2e-3 until stop 32) left it 0.18
        nats short of its tuned loss at the default size, and growth inherits whatever the small model
        lacks, so an untuned small model understates what growth is worth."""
        import hyperclone

        steps = self.small_steps(n_small)
        started = time.perf_counter()
        wind = hyperclone.tune(self.init_model("small"), str(self.pretrain),
                               self.work / "small", lrs=list(self.scale.lrs), budget_tokens=steps * self.tokens_per_step,
                               budgets=(max(BRANCHES),), optimizer="adamw", seed=0, force=True, warmup=0.05, **self.common)
        lr, tokens = wind["best_lr"], wind["budgets_tokens"][-1]
        tried = {rate: by[str(tokens)] for rate, by in wind["eval_loss"].items()}
        return self.small_final(lr), {"params": n_small, "tokens": tokens, "lr": lr, "tuning_eval_loss": tried, "final_eval_loss": wind["best_eval_loss"],
                       "seconds": round(time.perf_counter() - started, 1)}

    def small_steps(self, n_small: int) -> int:
        return math.ceil(self.scale.small_tokens_per_param * n_small / self.tokens_per_step)

    def budget(self, params: int) -> int:
        """An architecture's token budget, shared by its random init and its grown twin: 20 tokens per
        parameter, rounded up to a whole number of eighths of steps so every decay branch lands on a checkpoint."""
        eighths = math.ceil(self.scale.large_tokens_per_param * params / self.tokens_per_step / 8)
        return 8 * eighths * self.tokens_per_step

    def split(self, source: Path | None, n_small: int, rest_bytes: int | None = None) -> dict:
        """Cut the corpus into the small model's pretraining part and the continuation part every large arm
        trains on (at most about `rest_bytes` of it)."""
        self.pretrain, self.cont, corpus = split_corpus(source, self.work, self.pretrain_bytes(n_small), rest_bytes)
        return corpus

    def pretrain_bytes(self, n_small: int) -> int:
        """Byte tokens: a token is a byte; the held-out 5 % and packing remainders need a little more."""
        reserved = self.scale.split_tokens_per_param or self.scale.small_tokens_per_param
        return int(1.1 * reserved * n_small)

    def small_final(self, lr: float) -> Path:
        """The small model's pretrained checkpoint: its wind tunnel's run at `lr`, the full budget."""
        return self.work / "small" / "runs" / f"lr-{lr:.3g}" / f"budget-{max(BRANCHES)}" / "final"

    def tune(self, model: Path, arm: Arm, name: str, lrs, budget: int, budgets, budgets_at: str = "best") -> dict:
        """The arm's wind tunnel. The smaller budgets only at the best rate by default: an arm is measured
        at its chosen rate alone (the same losses as every rate's branches give there, for about 0.8 of the cost)."""
        import hyperclone

        # training seed 0 for every arm: one data order and one held-out eval set; a seed varies the
        # initialisation (random init) or the noise (grown) only, which is the spread the table shows
        return hyperclone.tune(model, str(self.cont), self.work / name, lrs=list(lrs), budget_tokens=budget, budgets=budgets,
                               budgets_at=budgets_at, optimizer=arm.optimizer, seed=0, force=True, warmup=arm.warmup,
                               weight_decay=arm.weight_decay, **{**self.common, "decay_fraction": arm.decay_fraction,
                                                                 "decay_shape": arm.decay_shape})


def _clear_dead_asides(path: Path) -> None:
    """Remove what a killed run's process left half-written beside `path` (`.name.pid`); a live process's stays."""
    for aside in path.parent.glob(f".{path.name}.*"):
        pid = aside.suffix[1:]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(aside, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it does, and it is someone else's
        pass
    return True


@dataclass
class Layout:
    """A run's models, budgets, data split and arms, fixed before anything trains."""

    params: dict[str, int]
    budgets: dict[str, int]  # tokens per large architecture
    corpus: dict
    todo: list[Arm]

    def arm_budgets(self) -> dict[str, int]:
        return {arm.name: self.budgets[arm.arch] for arm in self.todo}


def lay_out(bench: Bench, source: Path | None, chosen: list[Arm] | None) -> Layout:
    """Architectures, parameter counts and budgets, and the corpus cut in two (written into the work directory)."""
    bench.work.mkdir(parents=True, exist_ok=True)
    params = {arch: sum(_count(cfg)) for arch, cfg in bench.architectures().items()}
    budgets = {a: bench.budget(params[a]) for a in ("wide", "wide_deep", "deep")}
    from hyperclone.train.config import TrainConfig

    trained = 1 - TrainConfig.eval_fraction  # the share of its text an arm trains on; the rest is its held-out eval
    # the continuation holds one pass of the largest arm (every architecture's, so that a subset of arms sees
    # the same split as the full run), never less than CONTINUE_FLOOR
    corpus = bench.split(source, params["small"], max(CONTINUE_FLOOR, int(1.1 * max(budgets.values()) / trained)))
    todo = arms(bench.scale.noise, bench.scale.layers) if chosen is None else chosen
    _check_text(corpus, bench.pretrain_bytes(params["small"]), max(budgets[arm.arch] for arm in todo) / trained, source, bench.scale.hidden)
    corpus["continue_epochs"] = {a: round(b / (trained * corpus["continue_bytes"]), 2) for a, b in budgets.items()}
    return Layout(params, budgets, corpus, todo)


# a corpus far larger than a run needs is cut after this much continuation text: at hidden 64 of the gpu
# scale, site-packages' 333 MB of continuation took 92 s to pack at a run's first start and 15 s to load at
# every later one, cut to 64 MB 26 s and 12 s (2 CPU cores). The CPU records' corpora (9-17 MB) are never cut.
CONTINUE_FLOOR = 64_000_000
MAX_EPOCHS = 4  # passes over its text an arm may make: up to about 4, repeated text trains about as well as fresh (Muennighoff et al. 2023)


class ShortOfText(Exception):
    """The corpus cannot feed this size: the small model's pretraining would repeat, or an arm would pass
    over its text more than MAX_EPOCHS times."""


def _check_text(corpus: dict, pretrain: int, one_pass: float, source: Path | None, hidden: int) -> None:
    """Raise ShortOfText unless the split holds `pretrain` bytes for the small model and a continuation the
    largest chosen arm (`one_pass` bytes of text trained on) passes over at most MAX_EPOCHS times."""
    need = one_pass / MAX_EPOCHS
    if corpus["pretrain_bytes"] >= pretrain and corpus["continue_bytes"] >= need:
        return
    total = (corpus["pretrain_bytes"] + corpus["continue_bytes"]) / 1e6
    raise ShortOfText(f"{source or 'the standard library source'} holds {total:.1f} MB of text; hidden {hidden} needs {pretrain / 1e6:.1f} MB "
                      f"to pretrain the small model and {need / 1e6:.1f} MB more for the large arms (at most {MAX_EPOCHS} passes over it): "
                      "give --data with more text (e.g. a site-packages directory), or smaller models")


def run(scale: Scale, source: Path | None, work: Path, chosen: list[Arm] | None = None) -> dict:
    """Every arm (or the `chosen` ones) at this scale: returns the result dictionary."""
    began = time.perf_counter()
    bench = Bench(scale, work)
    layout = lay_out(bench, source, chosen)
    params, budgets = layout.params, layout.budgets
    small, small_report = bench.pretrain_small(params["small"])
    report = _run_arms(bench, layout.todo, small, layout.arm_budgets())
    tuned = {name: entry["lr"] for name, entry in report.items() if entry["tuning_eval_loss"] is not None}
    for name, entry in report.items():
        if not name.startswith("random_init") and entry["baseline"] in report:
            small_cost = small_report["tokens"] * params["small"] / params[entry["arch"]]
            _speedups(entry, report[entry["baseline"]]["budget_eval_loss"], budgets[entry["arch"]], small_cost)
    return {"scale": dict(vars(scale)), "corpus_split": layout.corpus, "small": small_report,
            "large": {"params": {a: params[a] for a in budgets}, "tokens": budgets,
                      "tokens_per_param": {a: round(b / params[a], 1) for a, b in budgets.items()},
                      "seq_len": scale.seq, "batch": scale.batch, "tuned_lr": tuned,
                      "schedule": schedule()},
            "arms": report, "minutes": round((time.perf_counter() - began) / 60, 1)}


def forecast_run(scale: Scale, source: Path | None, work: Path, chosen: list[Arm] | None = None) -> dict:
    """What `run` would train at this scale and how many minutes it should take here (see `forecast`)."""
    started = time.perf_counter()
    bench = Bench(scale, work)
    layout = lay_out(bench, source, chosen)
    found = forecast(bench, layout.todo, bench.small_steps(layout.params["small"]), layout.arm_budgets())
    return {"hidden": scale.hidden, "params": layout.params, "tokens": layout.budgets, **found,
            "seconds": round(time.perf_counter() - started, 1)}  # what measuring for the forecast took


def _run_arms(bench: Bench, todo: list[Arm], small: Path, budgets: dict[str, int]) -> dict[str, dict]:
    """Every arm, `bench.scale.jobs` at a time, each in a process of its own; an arm that reuses another's
    learning rate starts when that one is done. Returns the reports in `todo`'s order."""
    from concurrent.futures import FIRST_COMPLETED, wait

    report: dict[str, dict] = {}
    waiting, running = list(todo), {}
    with _pool(bench) as pool:
        while waiting or running:
            for arm in [a for a in waiting if a.tune_as is None or a.tune_as in report]:
                waiting.remove(arm)
                lr = report[arm.tune_as]["lr"] if arm.tune_as else None
                running[pool.submit(_arm, bench, arm, small, budgets[arm.name], lr)] = arm
            if not running:
                raise SystemExit(f"{', '.join(a.name for a in waiting)} reuse{'s' if len(waiting) == 1 else ''} the learning rate "
                                 f"of {', '.join(sorted({a.tune_as for a in waiting}))}: run that arm too")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                arm = running.pop(future)
                report[arm.name] = entry = future.result()
                print(f"{arm.name:28} lr {entry['lr']:.3g}  " + " ".join(f"{v:.3f}" for v in entry["budget_eval_loss"].values()),
                      file=sys.stderr, flush=True)
    return {arm.name: report[arm.name] for arm in todo}


def _pool(bench: Bench):
    """`bench.scale.jobs` processes for the arms, each at its share of torch's threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    context = multiprocessing.get_context("spawn")  # a forked child of a process that ran torch's threads can hang
    return ProcessPoolExecutor(bench.scale.jobs, mp_context=context, initializer=torch.set_num_threads,
                               initargs=(arm_threads(bench.scale.jobs),))


def arm_threads(jobs: int) -> int:
    """Torch threads for each of `jobs` arms training at once: this process's share."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


# --- how long a run will take, before it runs -------------------------------------------------------------

RATES_PER_TUNNEL = 4  # rates a wind tunnel trains: the grid's 3 and usually one past an edge (3-5 in the recorded runs)
MEASURED_STEPS = 12  # training steps timed per model (the first 2 left out: allocation and warm caches)


def forecast(bench: Bench, todo: list[Arm], small_steps: int, budgets: dict[str, int]) -> dict:
    """The run's minutes before it runs: every arm's training steps, evals and runs as `_measure_arm` makes
    them, times step, eval and start-up seconds measured here with hyperclone's own training loop (each model
    at the thread count and concurrency the run gives it), arms scheduled as `_run_arms` schedules them.
    A forecast, not a measurement: each tunnel is taken to train RATES_PER_TUNNEL rates."""
    pairs = sorted({(arm.arch, arm.optimizer) for arm in todo})
    small_cost = _measure_steps(bench, "small", "adamw", bench.pretrain)  # pretrained here, at every thread
    cost = dict(zip(pairs, _in_pool(bench, [(_measure_steps, bench, arch, opt, bench.cont) for arch, opt in pairs])))
    small = _seconds(small_cost, *_tunnel_work(small_steps, (max(BRANCHES),), RATES_PER_TUNNEL, every_budget=True))
    arms_s = {arm.name: _seconds(cost[arm.arch, arm.optimizer], *_arm_work(bench, arm, budgets[arm.name])) for arm in todo}
    wall = small + _makespan([(arm.name, arm.tune_as) for arm in todo], arms_s, bench.scale.jobs)
    return {"minutes": round(wall / 60, 1), "small_seconds": round(small), "arm_seconds": {k: round(v) for k, v in arms_s.items()},
            "costs": {"small": small_cost, **{f"{arch}/{opt}": c for (arch, opt), c in cost.items()}},
            "rates_per_tunnel": RATES_PER_TUNNEL, "jobs": bench.scale.jobs}


def _arm_work(bench: Bench, arm: Arm, budget: int) -> tuple[int, int, int]:
    """(runs, training steps, evals) of one arm as `_measure_arm` trains it: a tunnel at the whole budget whose
    best rate is the measurement; or a tunnel at a share of it, then the measurement at the chosen rate; or,
    reusing another arm's rate, the measurement alone."""
    steps, decay = budget // bench.tokens_per_step, arm.decay_fraction
    measure = _tunnel_work(steps, BRANCHES, 1, every_budget=True, decay=decay)
    if arm.tune_as is not None:
        return measure
    share = bench.scale.tune_share
    if share == 1:
        return _tunnel_work(steps, BRANCHES, RATES_PER_TUNNEL, every_budget=False, decay=decay)
    tunnel = _tunnel_work(round(steps * share), (1,), RATES_PER_TUNNEL, every_budget=True, decay=decay)
    return tuple(a + b for a, b in zip(tunnel, measure))


def _tunnel_work(steps: int, budgets: tuple[int, ...], rates: int, every_budget: bool, decay: float = DECAY) -> tuple[int, int, int]:
    """(runs, training steps, evals) of `hyperclone.tune` over `rates` rates: each rate a stable run, evaluated
    at its start and every branch point, and a decay branch per budget (`every_budget`) or for the whole
    budget only, the best rate's smaller budgets after the search (budgets_at="best"); `decay` the WSD
    decay's share of each budget."""
    from hyperclone.train.tune import Branches

    plan = Branches.plan(steps, budgets, decay)
    first = budgets if every_budget else (max(budgets),)
    later = tuple(k for k in budgets if k not in first)
    runs = rates * (1 + len(first)) + len(later)
    evals = rates * (1 + max(budgets) + len(first)) + len(later)
    return runs, rates * plan.run_steps(first) + plan.decay_steps(later), evals


def _seconds(cost: dict, runs: int, steps: int, evals: int) -> float:
    return runs * cost["run_s"] + steps * cost["step_s"] + evals * cost["eval_s"]


def _measure_steps(bench: Bench, arch: str, optimizer: str, data: Path) -> dict:
    """A short `hyperclone.train` run of the architecture's random init: seconds per step (the median of its
    later steps), per eval (its batches forward only, taken as a third of a step's work each) and per run
    for start-up and finish (the rest of the call's wall time)."""
    import statistics

    import hyperclone

    model = bench.init_model(arch)
    out = bench.work / "forecast" / f"{arch}-{optimizer}"

    def seconds(steps: int) -> float:
        started = time.perf_counter()
        hyperclone.train(model=str(model), data=str(data), out=str(out), max_steps=steps, lr=1e-3, optimizer=optimizer,
                         schedule="constant", seed=0, save_every=0, eval_every=0, force=True, **bench.common)
        return time.perf_counter() - started

    # a process's first run pays for imports and caches (about 5 s on 2 CPU cores); an arm's process pays
    # them once, not once per run, so a short run first and the timed one after it
    seconds(2)
    wall = seconds(MEASURED_STEPS)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = statistics.median(bench.tokens_per_step / r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > 2)
    shutil.rmtree(out)
    evaluation = bench.scale.eval_batches * step / 3
    return {"step_s": step, "eval_s": evaluation, "run_s": max(0.0, wall - MEASURED_STEPS * step - evaluation)}


def _in_pool(bench: Bench, calls: list[tuple]) -> list:
    """`calls` (function, *args) in the arms' processes, `bench.scale.jobs` at a time; their results in order."""
    with _pool(bench) as pool:
        return [future.result() for future in [pool.submit(*call) for call in calls]]


def _makespan(order: list[tuple[str, str | None]], seconds: dict[str, float], jobs: int) -> float:
    """When `jobs` workers finish the arms, taken first come first served as `_run_arms` submits them: the arms
    that tune for themselves at once, in order; an arm that reuses another's rate when that one is done."""
    free, submitted, done = [0.0] * jobs, {name: 0.0 for name, after in order if after is None}, {}
    after = {name: first for name, first in order if first is not None}
    rank = {name: i for i, (name, _) in enumerate(order)}
    while submitted:
        name = min(submitted, key=lambda n: (submitted[n], rank[n]))
        worker = min(range(jobs), key=free.__getitem__)
        free[worker] = done[name] = max(free[worker], submitted.pop(name)) + seconds[name]
        submitted.update({later: done[name] for later, first in after.items() if first == name})
    return max(done.values(), default=0.0)


class _Named(io.TextIOBase):
    """A stream that starts every line with the arm's name: arms in parallel share one stderr."""

    def __init__(self, name: str, stream) -> None:
        self.name, self.stream, self.fresh = name, stream, True

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            self.stream.write(f"[{self.name}] {line}" if self.fresh else line)
            self.fresh = line.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _arm(bench: Bench, arm: Arm, small: Path, budget: int, lr: float | None) -> dict:
    """The arm, in its own process, with every line it writes to stderr named."""
    with contextlib.redirect_stderr(_Named(arm.name, sys.__stderr__)):
        return _measure_arm(bench, arm, small, budget, lr)


def _measure_arm(bench: Bench, arm: Arm, small: Path, budget: int, lr: float | None) -> dict:
    """Make the arm's model (random init, or grown and verified), tune its learning rate (unless it reuses
    `lr`, another arm's), measure its budgets."""
    import hyperclone

    started = time.perf_counter()
    if arm.grow is None:
        model = bench.init_model(arm.arch, arm.seed)
    else:
        model = hyperclone.grow(small, {**arm.grow, "seed": arm.seed}, bench.work / f"grown-{arm.name}", force=True, progress=False)
        assert hyperclone.verify(small, model)["passed"], f"{arm.name} does not preserve the function"
    tuning, share = None, bench.scale.tune_share
    if lr is None:
        steps = budget // bench.tokens_per_step
        tuned_at = round(steps * share) * bench.tokens_per_step
        wind = bench.tune(model, arm, f"tune-{arm.name}", bench.scale.lrs, tuned_at, BRANCHES if share == 1 else (1,))
        lr, tuning = wind["best_lr"], {rate: by[str(tuned_at)] for rate, by in wind["eval_loss"].items()}
    if tuning is not None and share == 1:
        measured, run_dir = wind, bench.work / f"tune-{arm.name}"
    else:
        measured, run_dir = bench.tune(model, arm, f"measure-{arm.name}", [lr], budget, BRANCHES), bench.work / f"measure-{arm.name}"
    curve = rate_curve(measured, lr)
    entry = {"arch": arm.arch, "optimizer": arm.optimizer, "seed": arm.seed, "grow": arm.grow, "baseline": arm.baseline, "lr": lr,
             "warmup": arm.warmup, "weight_decay": arm.weight_decay, "decay_fraction": arm.decay_fraction, "decay_shape": arm.decay_shape,
             "tuning_eval_loss": tuning, "start_eval_loss": _start(run_dir), "budget_eval_loss": curve,
             "final_eval_loss": curve[budget]}
    if arm.grow is not None and "width" in arm.grow:
        entry.update(_copies(model, run_dir, lr, bench))
    return {**entry, "seconds": round(time.perf_counter() - started, 1)}


def _copies(grown: Path, run_dir: Path, lr: float, bench: Bench) -> dict:
    """The copies' correlation at the arm's learning rate, and at every learning rate its tunnel tried:
    how far the copies part depends on the rate, which is part of why a grown model wants its own."""
    runs = sorted((run_dir / "runs").glob("lr-*"), key=lambda d: float(d.name.removeprefix("lr-")))
    found = copy_correlation(grown, [d / f"budget-{max(BRANCHES)}" / "final" for d in runs], bench.cont, bench.scale.seq)
    by_lr = {d.name.removeprefix("lr-"): one for d, one in zip(runs, found)}
    return {"copies": by_lr[f"{lr:.3g}"], "copies_by_lr": {rate: one["copies"] for rate, one in by_lr.items()}}


def _start(run: Path) -> float:
    """The eval loss before the arm's first step (where a grown model starts)."""
    metrics = next((run / "runs").glob("*/stable/metrics.jsonl"))
    return next(r["eval_loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "eval_loss" in r)


def copy_correlation(grown: Path, trained: list[Path], corpus: Path, seq: int, blocks: int = 16) -> list[dict]:
    """Did the copies that width growth made come apart in training? Measured on the FFN's hidden units (the
    input of every down_proj), for each of the `trained` models: `copies` is the mean Pearson correlation of
    each unit with its copy over `blocks` blocks of text; `unrelated` the mean |correlation| of units that
    were never copies, the floor it could fall to. Copies still at 1 compute the same thing, so the extra
    width is unused.

    Copies are found, not assumed from a layout: in the grown model before training, a unit's copy is the
    one whose activations equal its own (correlation > 0.999), whatever order growth wrote them in. The
    text is the start of `corpus` (the large arms' own data): what is asked is whether two units respond
    alike, not how well the model predicts."""
    import torch

    ids = torch.tensor(list(_first_bytes(corpus, blocks * seq)), dtype=torch.long).reshape(blocks, seq)
    partners = []  # per layer: (units that have a copy, their copies)
    for before in _ffn_units(grown, ids):
        start = _correlations(before).fill_diagonal_(-2.0)
        best, partner = start.max(dim=1)
        found = (best > 0.999).nonzero().squeeze(1)
        partners.append((found, partner[found]))
    return [_parted(partners, _ffn_units(model, ids)) for model in trained]


def _parted(partners: list, units: list) -> dict:
    """The copies' mean correlation in one trained model, and the unrelated units' floor."""
    import torch

    pairs, unrelated = [], []
    for (found, partner), after in zip(partners, units):
        end = _correlations(after)
        pairs.append(end[found, partner])
        mask = ~torch.eye(len(end), dtype=torch.bool)
        mask[found, partner] = False
        unrelated.append(end[mask].abs())
    pairs = torch.cat(pairs)
    return {"copies": round(pairs.mean().item(), 4) if len(pairs) else None, "pairs": len(pairs),
            "unrelated": round(torch.cat(unrelated).mean().item(), 4)}


def _first_bytes(corpus: Path, count: int) -> bytes:
    """The first `count` UTF-8 bytes of a .jsonl corpus's documents (the benchmark's tokens are bytes)."""
    seen, size = [], 0
    with corpus.open() as lines:
        for line in lines:
            seen.append(json.loads(line)["text"].encode())
            size += len(seen[-1])
            if size >= count:
                break
    return b"".join(seen)[:count]


def _ffn_units(model_dir: Path, ids) -> list:
    """Each layer's FFN hidden units on `ids`: the input of its down_proj, [tokens, units], in float32."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load would bury the arms' lines
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    seen = []
    hooks = [module.register_forward_pre_hook(lambda _, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
             for name, module in model.named_modules() if name.endswith("mlp.down_proj")]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return seen


def _correlations(units):
    """Pearson correlation between every pair of columns of [tokens, units] (a dead unit correlates with nothing)."""
    centred = units - units.mean(dim=0)
    scaled = centred / centred.norm(dim=0).clamp_min(1e-12)
    return scaled.T @ scaled


def _speedups(entry: dict, baseline: dict[int, float], budget: int, small_cost: float) -> None:
    """The arm's speedup against its random-init twin's curve `baseline` ({budget: final eval loss}), with and
    without the small model's pretraining, and the part of it the head start alone explains."""
    target = baseline[budget]
    reached, bound = tokens_to_reach(entry["budget_eval_loss"], target)
    entry["target_eval_loss"] = target
    entry["tokens_to_baseline_final"] = reached
    entry["speedup"] = None if reached is None else budget / reached
    entry["speedup_is_lower_bound"] = bound
    entry["speedup_including_small"] = None if reached is None else budget / (reached + small_cost)
    entry.update(head_start(baseline, entry["start_eval_loss"], budget))


def wide_speedups(entry: dict, baseline: dict[int, float], record: dict) -> None:
    """`_speedups` for a x2-wide arm a probe measured on a finished run: at that run's budget, counting its small model."""
    small, large = record["small"], record["large"]
    _speedups(entry, baseline, large["tokens"]["wide"], small["tokens"] * small["params"] / large["params"]["wide"])


def rate_curve(tuned: dict, lr: float) -> dict[int, float]:
    """A wind tunnel's eval loss at `lr` by budget in tokens (tune.json keys both as strings)."""
    return {int(t): loss for t, loss in tuned["eval_loss"][f"{lr:.6g}"].items()}


def head_start(baseline: dict[int, float], start: float, budget: int) -> dict:
    """What the small model's training is worth to a grown arm in its random-init twin's tokens: the WSD
    budget whose decayed end reaches the grown model's starting loss. Were the grown model then to learn as
    random init does from that loss on (the twin's curve shifted left by the head start), it would reach the
    twin's final loss after budget - head start tokens: `speedup_from_head_start`. The measured speedup is
    above that when growth learns faster than random init from the same loss, below when the grown model
    loses tokens moving away from where the small model settled. None: the twin never gets down to the
    grown model's start (the head start is worth its whole budget or more)."""
    tokens, bound = tokens_to_reach(baseline, start)
    if tokens is None or tokens >= budget:
        return {"head_start_tokens": None, "head_start_is_upper_bound": False, "speedup_from_head_start": None}
    return {"head_start_tokens": tokens, "head_start_is_upper_bound": bound, "speedup_from_head_start": budget / (budget - tokens)}


def _count(config: dict) -> list[int]:
    """Parameters of a llama config, counted by transformers on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    return [p.numel() for p in model.parameters()]


def finished_run(run: Path) -> tuple[dict, Bench]:
    """A finished `--out` directory, for the probes that measure more on it (noise_beyond_cap.py,
    lr_resolution.py): its record, and a Bench on its own data and scale."""
    import torch

    record = json.loads(next(run.glob("convergence*.json")).read_text())
    scale = Scale(**{f: v for f, v in record["scale"].items() if f in Scale.__dataclass_fields__ and not isinstance(v, list)})
    # the thread count the run's arms trained at: a rate the probe trains again then gives the run's own losses
    torch.set_num_threads(arm_threads(scale.jobs))
    bench = Bench(scale, run)
    bench.pretrain, bench.cont = run / "pretrain.jsonl", run / "continue.jsonl"
    return record, bench


def recorded_arm(record: dict, name: str, **changes) -> Arm:
    """An arm of a finished run as it trained, for a probe to train again (records before stop 42 kept no
    warmup or weight decay, those before stop 44 no decay phase: every arm then trained at 0.05, 0.1 and a
    linear decay over the last 20 %)."""
    entry = record["arms"][name]
    arm = Arm(name, entry["arch"], entry["grow"], entry["optimizer"], entry["seed"], entry["baseline"],
              warmup=entry.get("warmup", 0.05), weight_decay=entry.get("weight_decay", 0.1),
              decay_fraction=entry.get("decay_fraction", DECAY), decay_shape=entry.get("decay_shape", "linear"))
    return replace(arm, **changes)


def probe_result(name: str, record: dict, run: Path, started: float, **fields) -> dict:
    """A probe's record: what it measured on which run, with the machine."""
    from benchmarks_machine import machine

    return {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "corpus": record["corpus"],
            "run": str(run), **fields, "minutes": round((time.perf_counter() - started) / 60, 1)}


def emit_probe(result: dict, record: dict, write: bool, tag: str = "") -> None:
    """Print a probe's record and, with `write`, keep it as results/<benchmark>[-<tag>]-<corpus>.json."""
    text = json.dumps(result, indent=2) + "\n"
    print(text)
    if write:
        corpus = "stdlib" if record["corpus"].startswith("Python standard library") else Path(record["corpus"]).name
        (HERE / "results" / "-".join(filter(None, (result["benchmark"], tag, corpus)))).with_suffix(".json").write_text(text)


def key_arms(scale: Scale) -> list[Arm]:
    """Random init and x2 width with noise: the pair every sweep repeats."""
    return [a for a in arms(scale.noise, scale.layers) if a.name in ("random_init", "hyperclone_noise")]


def _key_row(result: dict, grown: str) -> dict:
    """One sweep point: the grown arm against the run's random init."""
    arm, random_init = result["arms"][grown], result["arms"]["random_init"]
    return {"params_small": result["small"]["params"], "params_wide": result["large"]["params"]["wide"],
            "tokens": result["large"]["tokens"]["wide"], "small_eval_loss": result["small"]["final_eval_loss"],
            "random_init_final": random_init["final_eval_loss"], "grown_start": arm["start_eval_loss"],
            "grown_final": arm["final_eval_loss"], "speedup": arm["speedup"], "speedup_including_small": arm["speedup_including_small"],
            "speedup_is_lower_bound": arm["speedup_is_lower_bound"], "lr_random": random_init["lr"], "lr_grown": arm["lr"],
            **{field: arm[field] for field in ("head_start_tokens", "head_start_is_upper_bound", "speedup_from_head_start")},
            "copies": arm["copies"]["copies"], "unrelated": arm["copies"]["unrelated"],
            "continue_epochs": result["corpus_split"]["continue_epochs"]["wide"]}  # over 1: the x2-wide pair saw text again


def sizes_sweep(base: Scale, main: dict, data: Path | None, work: Path, factors: tuple[float, ...] | None = None) -> list[dict]:
    """The key arms at each size (`factors` of the main hidden size, default the scale's three), the same
    tokens per parameter; factor 1 is the main run's."""
    # hidden x factor: the blocks' parameters grow about factor^2
    scales = {factor: replace(base, hidden=round(base.hidden * factor), ffn=round(base.ffn * factor)) for factor in factors or base.sweep}
    for factor, scale in scales.items():  # every size's text first: a corpus too short must not end the sweep halfway
        if factor != 1:
            lay_out(Bench(scale, work / f"hidden-{scale.hidden}"), data, key_arms(scale))
    rows = []
    for factor, scale in scales.items():
        result = main if factor == 1 else run(scale, data, work / f"hidden-{scale.hidden}", key_arms(scale))
        rows.append({"hidden": scale.hidden, **_key_row(result, "hyperclone_noise")})
    return rows


def _smallest(base: Scale) -> Scale:
    """The smallest --sizes size, with the largest --pretrain point's bytes set aside for pretraining, so
    that every pretrain and warmup point's large arms continue on the same data."""
    return replace(base, hidden=round(base.hidden * base.sweep[0]), ffn=round(base.ffn * base.sweep[0]),
                   split_tokens_per_param=max(base.pretrain_sweep))


def pretrain_sweep(base: Scale, data: Path | None, work: Path) -> list[dict]:
    """The key arms with the small model pretrained for each of `base.pretrain_sweep` tokens per parameter."""
    rows = []
    for tokens in base.pretrain_sweep:
        scale = replace(_smallest(base), small_tokens_per_param=tokens)
        rows.append({"small_tokens_per_param": tokens, "hidden": scale.hidden,
                     **_key_row(run(scale, data, work / f"pretrain-{tokens}", key_arms(scale)), "hyperclone_noise")})
    return rows


def warmup_sweep(base: Scale, data: Path | None, work: Path) -> list[dict]:
    """The grown arm at each of `base.warmup_sweep` warmup fractions."""
    return _grown_sweep(base, data, work, "warmup", base.warmup_sweep,
                        lambda grown, w: replace(grown, name=f"hyperclone_noise_warmup{w:g}", warmup=w))


def noise_sweep(base: Scale, data: Path | None, work: Path) -> list[dict]:
    """The grown arm at each of `base.noise_sweep` noise scales: how much symmetry breaking the copies need
    to use their width."""
    return _grown_sweep(base, data, work, "noise", base.noise_sweep,
                        lambda grown, n: replace(grown, name=f"hyperclone_noise{n:g}", grow={**grown.grow, "noise": n}))


def _grown_sweep(base: Scale, data: Path | None, work: Path, key: str, values: tuple, vary) -> list[dict]:
    """The grown arm varied along `values` (each point's learning rate tuned on its own) against one random
    init at the default settings, at the smallest size."""
    scale = _smallest(base)
    random_init, grown = key_arms(scale)
    chosen = [vary(grown, value) for value in values]
    result = run(scale, data, work, [random_init, *chosen])
    return [{key: value, "hidden": scale.hidden, **_key_row(result, arm.name)} for value, arm in zip(values, chosen)]


def _factors(text: str) -> tuple[float, ...]:
    """--sizes' factors, e.g. 1.5,2: positive numbers, in the order given."""
    try:
        factors = tuple(float(part) for part in text.split(","))
    except ValueError:
        factors = ()
    if not factors or min(factors) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive factors of the hidden size, e.g. 1.5,2")
    return factors


def main() -> None:
    try:
        _main()
    except ShortOfText as short:
        print(f"error: {short}", file=sys.stderr)
        sys.exit(2)


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--sizes", nargs="?", const=True, default=False, type=_factors, metavar="F,F,...",
                    help="also sweep model size (key arms only): hidden x each factor, the same tokens per parameter "
                         "(default: the scale's three, 0.5,0.75,1 at cpu scale, 1,1.5,2 at gpu)")
    ap.add_argument("--pretrain", action="store_true", help="also sweep the small model's pretraining length (key arms only)")
    ap.add_argument("--warmups", action="store_true", help="also sweep the grown arm's warmup fraction")
    ap.add_argument("--noises", action="store_true", help="also sweep the grown arm's symmetry-breaking noise")
    ap.add_argument("--arms", default=None, help="run only these arms (comma-separated names)")
    ap.add_argument("--tune-share", type=float, default=None,
                    help="tune each arm's learning rate at this share of its budget (default 1: at the budget itself)")
    ap.add_argument("--reserve", type=int, default=None,
                    help="set aside pretraining text for this many tokens per small-model parameter: moves where the "
                         "large arms' data starts, to see how much the figures depend on the data split")
    ap.add_argument("--minutes", type=float, default=None,
                    help="cpu scale: shrink the budgets to fit this many minutes (below 100/20 tokens per parameter); gpu scale: "
                         f"train the largest models whose run is forecast to fit them (default {GPU_MINUTES:g})")
    ap.add_argument("--plan", action="store_true", help="print the models, budgets and forecast minutes, and train nothing")
    ap.add_argument("--jobs", type=int, default=None, help="arms trained at once, each in its own process (default: 2 at cpu scale, 1 at gpu)")
    ap.add_argument("--out", type=Path, default=Path("convergence-out"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="also write the result into benchmarks/results/")
    args = ap.parse_args()
    from benchmarks_machine import machine

    data = args.data
    scale = SCALES[args.scale]
    scale = replace(scale, split_tokens_per_param=args.reserve, tune_share=args.tune_share or scale.tune_share, jobs=args.jobs or scale.jobs)
    chosen = None if args.arms is None else [a for a in arms(scale.noise, scale.layers) if a.name in args.arms.split(",")]
    sizing = None
    if args.scale == "gpu":  # the largest model that fits the minutes, at the full tokens per parameter
        scale, sizing = fit_scale(scale, args.minutes or GPU_MINUTES, data, args.out / "sizing", chosen)
    elif args.minutes is not None:  # the cpu scale's models, on fewer tokens per parameter
        scale = _fit(scale, args.minutes)
    if args.plan:
        plan = sizing or [forecast_run(scale, data, args.out / "forecast", chosen)]
        print(json.dumps(plan, indent=2) if args.json else _plan_table(plan))
        return
    result = {"benchmark": "convergence", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "corpus": str(args.data) if args.data else "Python standard library source (.py, no tests), UTF-8 bytes as tokens",
              **({"sizing": sizing} if sizing else {}), **run(scale, data, args.out, chosen)}
    # a variant never overwrites the default run's record
    stem = "-".join(["convergence"] + ([args.scale] if args.scale != "cpu" else []) + ([args.data.name] if args.data else [])
                    + ([f"reserve{args.reserve}"] if args.reserve else [])
                    + ([f"tune{scale.tune_share:g}"] if scale.tune_share != 1 else []) + (["subset"] if chosen is not None else []))
    _write(result, args.out, stem, args.record)  # the arms first: a long sweep must not hold them hostage
    factors = args.sizes if isinstance(args.sizes, tuple) else None
    sweeps = {"sizes": lambda work: sizes_sweep(scale, result, data, work, factors), "pretrain": lambda work: pretrain_sweep(scale, data, work),
              "warmups": lambda work: warmup_sweep(scale, data, work), "noises": lambda work: noise_sweep(scale, data, work)}
    for key, sweep in sweeps.items():
        if getattr(args, key):
            result[key] = sweep(args.out / key)
            _write(result, args.out, stem, args.record)
    print(json.dumps(result) if args.json else _table(result, stem))


def _write(result: dict, out: Path, stem: str, record: bool) -> None:
    written = [out / f"{stem}.png", out / f"{stem}.md", out / f"{stem}.json"]
    _plot(result, written[0])
    written[1].write_text(_table(result, stem))
    written[2].write_text(json.dumps(result, indent=2) + "\n")
    if any(key in result for key in SWEEPS):
        written.append(out / f"{stem}-sweeps.png")
        _plot_sweeps(result, written[-1])
    if record:
        for path in written:
            shutil.copy(path, HERE / "results" / path.name)


def fit_scale(scale: Scale, minutes: float, source: Path | None, work: Path, chosen: list[Arm] | None,
              ladder: tuple[int, ...] = GPU_HIDDEN) -> tuple[Scale, list[dict]]:
    """The largest hidden size of `ladder` (head size and FFN ratio kept) whose run is forecast to take at
    most `minutes` on this machine, measured here rather than guessed: a model that fills an H100 is not the
    one that fills an H200. A size the corpus cannot feed (ShortOfText) ends the ladder too. Returns the
    size and every size's forecast; exits 2 when even the smallest is over, raises when it is short of text."""
    head_dim, tried, fitted = scale.hidden // scale.heads, [], None
    for hidden in ladder:
        candidate = replace(scale, hidden=hidden, ffn=round(hidden * scale.ffn / scale.hidden), heads=hidden // head_dim)
        try:
            tried.append(forecast_run(candidate, source, work / f"hidden-{hidden}", chosen))
        except ShortOfText as short:  # a larger model needs more text than the corpus has: the ladder ends here
            if fitted is None:
                raise
            tried.append({"hidden": hidden, "short_of_text": str(short)})
            print(f"sizing: hidden {hidden}: {short}", file=sys.stderr, flush=True)
            break
        print(f"sizing: hidden {hidden}: {tried[-1]['minutes']:g} minutes forecast", file=sys.stderr, flush=True)
        if tried[-1]["minutes"] > minutes:
            break
        fitted = candidate
    if fitted is None:
        print(f"error: even hidden {ladder[0]} is forecast at {tried[0]['minutes']:g} minutes on this machine, over --minutes "
              f"{minutes:g}: give more --minutes, or run --scale cpu", file=sys.stderr)
        sys.exit(2)
    return fitted, tried


def _plan_table(plan: list[dict]) -> str:
    """Each size's parameters, budgets and forecast, and where each one's time goes."""
    lines = ["| hidden | params small / wide / wide+deep / deep | tokens wide | forecast, minutes |", "|---|---|---|---|"]
    short = [one for one in plan if "short_of_text" in one]
    plan = [one for one in plan if "short_of_text" not in one]
    for one in plan:
        p = one["params"]
        lines.append(f"| {one['hidden']} | {p['small']:,} / {p['wide']:,} / {p['wide_deep']:,} / {p['deep']:,} | "
                     f"{one['tokens']['wide']:,} | {one['minutes']:g} |")
    lines.append("")
    lines += [f"hidden {one['hidden']}: small model {one['small_seconds']} s, then {one['jobs']} arm(s) at a time: "
              + ", ".join(f"{name} {s} s" for name, s in one["arm_seconds"].items()) for one in plan]
    lines += [f"hidden {one['hidden']}: not sized: {one['short_of_text']}" for one in short]
    return "\n".join(lines)


def _fit(scale: Scale, minutes: float) -> Scale:
    """Fewer tokens per parameter when --minutes asks for a shorter run than the default (about 20 at cpu scale),
    and fewer held-out batches per eval: at a few tokens per parameter the evals would cost as much as training."""
    share = min(1.0, minutes / 20)
    return replace(scale, small_tokens_per_param=max(1, round(scale.small_tokens_per_param * share)),
                   eval_batches=max(4, round(scale.eval_batches * share)),
                   large_tokens_per_param=max(1, round(scale.large_tokens_per_param * share)),
                   pretrain_sweep=tuple(max(1, round(t * share)) for t in scale.pretrain_sweep))


def _plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, arm in result["arms"].items():
        tokens, losses = zip(*sorted((int(t), v) for t, v in arm["budget_eval_loss"].items()))
        style = "--" if name.startswith("random") else "-"
        ax.plot(tokens, losses, style + "o", label=f"{name} (lr {arm['lr']:.2g})", linewidth=1.3, markersize=3)
    grown, twin = result["arms"].get("hyperclone_noise", {}), result["arms"].get("random_init")
    if grown.get("head_start_tokens") and twin:  # what the head start alone would give: the twin's curve moved left by it
        shift = grown["head_start_tokens"]
        moved = sorted((int(t) - shift, loss) for t, loss in twin["budget_eval_loss"].items() if int(t) > shift)
        ax.plot(*zip(*moved), "x:", color="black", linewidth=1.5, label="random_init shifted left by hyperclone_noise's head start")
    ax.axhline(result["small"]["final_eval_loss"], color="grey", linestyle=":", label="small model before growth")
    ax.set_xscale("log")
    ax.set_xlabel("WSD budget (tokens of this arm)")
    ax.set_ylabel("final eval loss at that budget")
    ax.set_title("after growth vs random initialisation (each arm at its tuned learning rate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# each sweep's row field, plot axis and table title
SWEEPS = {"sizes": ("hidden", "small model's hidden size (x2 wide after growth)", "hidden (small)"),
          "pretrain": ("small_tokens_per_param", "small model's pretraining, tokens per parameter", "small model's tokens per parameter"),
          "warmups": ("warmup", "grown arm's warmup, fraction of its budget", "grown arm's warmup"),
          "noises": ("noise", "grown arm's noise (relative to each row's RMS)", "grown arm's noise")}


# sweeps of the grown arm alone at the smallest size, where it starts about at random init's final loss: its
# speedup there is a bound or set by how the tuned rate's short budgets end, so the plot shows the final loss
BY_FINAL_LOSS = ("warmups", "noises")


def _plot_sweeps(result: dict, out: Path) -> None:
    """Speedup of x2 width with noise along the size and pretraining sweeps (a triangle is a lower bound,
    reached at the smallest budget), its final eval loss along the warmup and noise sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [key for key in SWEEPS if key in result]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4), squeeze=False)
    for ax, key in zip(axes[0], shown):
        field, label, _ = SWEEPS[key]
        (_final_loss_panel if key in BY_FINAL_LOSS else _speedup_panel)(ax, result[key], field)
        if key == "pretrain":
            ax.set_xscale("log")
        if key == "noises":
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlim(left=-0.003)  # no empty negative half: the noise starts at 0
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("x2 width with noise along each sweep: speedup over random init (triangle: lower bound) or final eval loss")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _speedup_panel(ax, rows: list[dict], field: str) -> None:
    rows = [r for r in rows if r["speedup"] is not None]
    for value, name, color in (("speedup", "grown model's tokens", "C0"), ("speedup_including_small", "incl. small model", "C1")):
        ax.plot([r[field] for r in rows], [r[value] for r in rows], "-", color=color, label=name)
        for r in rows:
            ax.plot(r[field], r[value], "^" if r["speedup_is_lower_bound"] else "o", color=color)
    ax.axhline(1, color="grey", linestyle=":")
    ax.axhline(2, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel("speedup over random init")


def _final_loss_panel(ax, rows: list[dict], field: str) -> None:
    ax.plot([r[field] for r in rows], [r["grown_final"] for r in rows], "o-", color="C0", label="grown model, final")
    ax.axhline(rows[0]["grown_start"], color="C0", linestyle=":", label="grown model, start")
    ax.axhline(rows[0]["random_init_final"], color="C3", linestyle="--", label="random init, final")
    ax.set_ylabel("eval loss")


def _x(value: float | None, bound: bool = False) -> str:
    return "not reached" if value is None else f"{'≥ ' if bound else ''}{value:.2f}x"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f}"


def _table(result: dict, stem: str) -> str:
    rows = ["| arm | lr (tuned) | start eval loss | final eval loss | target (twin's final) | tokens to target | speedup | incl. small model | "
            "head start → speedup it alone gives | copies' correlation | minutes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in result["arms"].items():
        reached = arm.get("tokens_to_baseline_final")
        copies = "—" if "copies" not in arm else _corr(arm["copies"]["copies"])  # width arms only
        rows.append(f"| {name} | {arm['lr']:.3g} | {arm['start_eval_loss']:.3f} | {arm['final_eval_loss']:.3f} | "
                    f"{arm['target_eval_loss']:.3f} | {'—' if reached is None else f'{reached:,.0f}'} | "
                    f"{_x(arm['speedup'], arm['speedup_is_lower_bound'])} | {_x(arm['speedup_including_small'])} | "
                    f"{_head(arm, max(map(int, arm['budget_eval_loss'])))} | {copies} | {_minutes(arm['seconds'])} |" if "speedup" in arm else
                    f"| {name} | {arm['lr']:.3g} | {arm['start_eval_loss']:.3f} | {arm['final_eval_loss']:.3f} | — | — | — | — | — | {copies} | "
                    f"{_minutes(arm['seconds'])} |")
    large, small = result["large"], result["small"]
    head = (f"# Convergence after growth\n\n{result['corpus']}. Small model {small['params']:,} parameters trained for "
            f"{small['tokens']:,} tokens ({small['tokens'] / small['params']:.0f} per parameter, {_small_lr(result)}, eval loss {small['final_eval_loss']:.3f}); "
            f"each large pair (random init and grown twin) trained for {result['scale']['large_tokens_per_param']} tokens per parameter of its architecture: "
            + ", ".join(f"{k} {large['params'][k]:,} parameters, {large['tokens'][k]:,} tokens" for k in large["params"])
            + f". {large['schedule']}; learning rates tuned at {_share(result['scale']['tune_share'])}. "
            f"{_minutes(result['minutes'] * 60 if result['minutes'] is not None else None)} minutes on "
            f"{result['machine']['cuda'] or str(result['machine']['cpus']) + ' CPU cores'}.\n\n")
    table = head + "\n".join(rows) + "\n"
    if "copies_by_lr" in result["arms"].get("hyperclone_noise", {}):
        table += ("\nx2 width with noise, copies' correlation after training at each learning rate tried: "
                  + ", ".join(f"{lr} {value:.2f}" for lr, value in result["arms"]["hyperclone_noise"]["copies_by_lr"].items()) + "\n")
    for key, (field, _, title) in SWEEPS.items():
        if key in result:
            table += _sweep_table(result[key], title, field)
    return table


def _sweep_table(rows: list[dict], title: str, key: str) -> str:
    # records from before the copy correlation (or the epochs over the data) was recorded lack the column
    copies, epochs = "copies" in rows[0], "continue_epochs" in rows[0]
    head = (f"\n| {title} | params (x2 wide) | grown start | grown final | random init final | speedup | incl. small | head start → alone |"
            " lr random / grown |" + (" copies' correlation (unrelated units) |" if copies else "") + (" epochs of its data |" if epochs else "")
            + "\n|---|---|---|---|---|---|---|---|---|" + ("---|" if copies else "") + ("---|" if epochs else "") + "\n")
    return head + "\n".join(
        f"| {r[key]} | {r['params_wide']:,} | {r['grown_start']:.3f} | {r['grown_final']:.3f} | {r['random_init_final']:.3f} | "
        f"{_x(r['speedup'], r['speedup_is_lower_bound'])} | {_x(r['speedup_including_small'], r['speedup_is_lower_bound'])} | "
        f"{_head(r, r['tokens'])} | {r['lr_random']:.3g} / {r['lr_grown']:.3g} |" + (f" {_corr(r['copies'])} ({r['unrelated']:.2f}) |" if copies else "")
        + (f" {r['continue_epochs']:.2f} |" if epochs else "")
        for r in rows) + "\n"


def _head(arm: dict, budget: int) -> str:
    """The head start as a share of the arm's budget, and the speedup it alone would give (see head_start);
    records from before it was computed show a dash."""
    if "speedup_from_head_start" not in arm:
        return "—"
    if arm["speedup_from_head_start"] is None:
        return "≥ all → unbounded"
    at_most = "≤ " if arm["head_start_is_upper_bound"] else ""
    return f"{at_most}{arm['head_start_tokens'] / budget:.2f} → {at_most}{arm['speedup_from_head_start']:.2f}x"


def _small_lr(result: dict) -> str:
    """Records from before stop 32 pretrained the small model at a fixed rate; later ones tune it."""
    small = result["small"]
    return f"lr {small['lr']:.3g} tuned" if "lr" in small else f"lr {result['scale']['small_lr']:.3g} fixed, not tuned"


def _share(share: float) -> str:
    return "each arm's whole budget" if share == 1 else f"{share:g} of each arm's budget"


def _corr(value: float | None) -> str:
    return "no copies found" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
