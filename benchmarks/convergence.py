"""Does growth pay? Tokens a grown model needs to reach a randomly initialised model's final loss.

Pretrains a small llama on a real corpus, grows it (x2 width; and x2 width + x2 depth), continues
training, and trains the same large architectures from random initialisation with the same data
order, optimizer, schedule and token budget. Arms on the x2-width architecture: random init,
HyperCloning with noise, exact copies (noise 0), and the grown model with MuonClip instead of AdamW.
On the x2-width-x2-depth architecture, and on the x2-depth one (depth-only growth): random init and
the grown model.

Speedup = random-init tokens / tokens the arm needs to reach random init's final eval loss; the same
counting the small model's pretraining compute (its tokens x N_small / N_large) as extra tokens.

    python benchmarks/convergence.py [--data PATH] [--minutes 20] [--json] [--out DIR]

Without --data the corpus is the running interpreter's standard library source (real text, no download).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

SMALL = dict(vocab_size=260, hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=3,
             num_key_value_heads=3, max_position_embeddings=256, tie_word_embeddings=False)
SEQ, BATCH, LR = 128, 16, 2e-3


def stdlib_corpus(out: Path, limit_bytes: int) -> Path:
    """The standard library's own .py files (no tests, no site-packages) as a .jsonl corpus."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.rglob("*.py") if not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    path, size = out / "stdlib.jsonl", 0
    with open(path, "w") as fh:
        for f in files:
            text = f.read_text(errors="replace")
            fh.write(json.dumps({"text": text}) + "\n")
            size += len(text)
            if size >= limit_bytes:
                break
    return path


def eval_curve(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(m["tokens"], m["eval_loss"]) for m in lines if "eval_loss" in m]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count where the eval curve reaches `target` (linear between eval points)."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l0 <= target:
            return float(t0)
        if l1 <= target:
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


def params(model_dir: Path) -> int:
    import hyperclone

    return hyperclone.inspect(model_dir)["parameters"]


def train(model: Path, data: Path, out: Path, steps: int, optimizer: str = "adamw", eval_every: int = 0,
          warmup: float = 0.05) -> float:
    import hyperclone

    start = time.perf_counter()
    hyperclone.train(model=str(model), data=str(data), out=str(out), max_steps=steps, optimizer=optimizer, lr=LR,
                     seq_len=SEQ, batch_size=BATCH, schedule="wsd", warmup=warmup, decay_fraction=0.2, eval_every=eval_every,
                     eval_batches=8, eval_at_start=True, trackers="none", progress=False, force=True, seed=0)
    return time.perf_counter() - start


def rate(model: Path, data: Path, work: Path) -> float:
    """Measured tokens/s of a short run (the same loop, the same machine)."""
    out = work / f"rate-{model.name}"
    train(model, data, out, 6)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    shutil.rmtree(out)
    return sorted(r["tokens_per_s"] for r in records[2:])[len(records[2:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path("convergence-out"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="also write the result into benchmarks/results/")
    args = ap.parse_args()

    import hyperclone
    from benchmarks_machine import machine
    from hyperclone.testing import save_tiny_model

    began = time.perf_counter()
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or stdlib_corpus(work, 6_000_000)
    small = save_tiny_model("llama", work / "small-init", seed=0, **SMALL)
    wide_cfg = {**SMALL, "hidden_size": 192, "intermediate_size": 512, "num_attention_heads": 6, "num_key_value_heads": 6}
    deep_cfg = {**wide_cfg, "num_hidden_layers": 8}
    random_wide = save_tiny_model("llama", work / "random-wide", seed=1, **wide_cfg)
    random_deep = save_tiny_model("llama", work / "random-deep", seed=1, **deep_cfg)
    random_depth = save_tiny_model("llama", work / "random-depth", seed=1, **{**SMALL, "num_hidden_layers": 8})
    for directory in (small, random_wide, random_deep, random_depth):  # transformers' own init for the random arms
        _reinit(directory)

    # Budget: small pretraining gets half the large arms' tokens; eight large arms share the rest.
    r_small, r_wide, r_deep, r_depth = (rate(m, data, work) for m in (small, random_wide, random_deep, random_depth))
    budget = args.minutes * 60 * 0.7 - (time.perf_counter() - began)  # grow, verify, data and evals take the rest
    per_large_token = 0.5 / r_small + 4 / r_wide + 2 / r_deep + 2 / r_depth
    large_tokens = budget / per_large_token
    tokens_per_step = SEQ * BATCH
    large_steps = max(20, int(large_tokens / tokens_per_step))
    small_steps = max(10, large_steps // 2)
    eval_every = max(1, large_steps // 20)

    seconds = {"small_pretrain": train(small, data, work / "small", small_steps, eval_every=eval_every)}
    trained_small = work / "small" / "final"
    grown = {
        "hyperclone_noise": hyperclone.grow(trained_small, {"width": 2}, work / "grown-noise", force=True, progress=False),
        "exact_copies": hyperclone.grow(trained_small, {"width": 2, "noise": 0}, work / "grown-exact", force=True, progress=False),
        "hyperclone_width_depth": hyperclone.grow(trained_small, {"width": 2, "layers": 8}, work / "grown-deep", force=True, progress=False),
        "hyperclone_depth_only": hyperclone.grow(trained_small, "deep-2x", work / "grown-depth", force=True, progress=False),
    }
    for name, path in grown.items():
        assert hyperclone.verify(trained_small, path)["passed"], f"{name} does not preserve the function"
    arms = {
        "random_init": (random_wide, "adamw", "wide"),
        "hyperclone_noise": (grown["hyperclone_noise"], "adamw", "wide"),
        "exact_copies": (grown["exact_copies"], "adamw", "wide"),
        "hyperclone_noise_muonclip": (grown["hyperclone_noise"], "muonclip", "wide"),
        "random_init_width_depth": (random_deep, "adamw", "deep"),
        "hyperclone_width_depth": (grown["hyperclone_width_depth"], "adamw", "deep"),
        "random_init_depth": (random_depth, "adamw", "depth"),
        "hyperclone_depth_only": (grown["hyperclone_depth_only"], "adamw", "depth"),
    }
    curves = {}
    for name, (model, optimizer, _) in arms.items():
        seconds[name] = train(model, data, work / name, large_steps, optimizer, eval_every)
        curves[name] = eval_curve(work / name)
    curves["small_pretrain"] = eval_curve(work / "small")

    n_small = params(trained_small)
    n_large = {"wide": params(random_wide), "deep": params(random_deep), "depth": params(random_depth)}
    baselines = {"wide": "random_init", "deep": "random_init_width_depth", "depth": "random_init_depth"}
    small_tokens = small_steps * tokens_per_step
    total = large_steps * tokens_per_step
    report = {}
    for name, (_, _, arch) in arms.items():
        baseline = baselines[arch]
        target = curves[baseline][-1][1]
        reached = tokens_to_reach(curves[name], target)
        entry = {"final_eval_loss": curves[name][-1][1], "start_eval_loss": curves[name][0][1], "seconds": round(seconds[name], 1),
                 "baseline": baseline, "tokens_to_baseline_final": reached}
        if not name.startswith("random_init"):
            # resolution: the first eval interval when the arm starts below the target
            floor = eval_every * tokens_per_step / 2
            effective = None if reached is None else max(reached, floor)
            entry["speedup"] = None if effective is None else total / effective
            entry["speedup_lower_bound"] = reached is not None and reached < floor
            small_cost = small_tokens * n_small / n_large[arch]
            entry["speedup_including_small"] = None if reached is None else total / (reached + small_cost)
        report[name] = entry
    growth_arms = [a for a in report if not a.startswith("random_init") and report[a].get("speedup")]
    best = max(growth_arms, key=lambda a: report[a]["speedup"], default=None)
    result = {
        "benchmark": "convergence", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "corpus": str(data) if args.data else "Python standard library source (.py, no tests), UTF-8 bytes as tokens",
        "small": {"params": n_small, "tokens": small_tokens, "final_eval_loss": curves["small_pretrain"][-1][1]},
        "large": {"params_width": n_large["wide"], "params_width_depth": n_large["deep"], "params_depth": n_large["depth"], "tokens_per_arm": total, "steps": large_steps,
                  "seq_len": SEQ, "batch": BATCH, "lr": LR, "schedule": "wsd (5 % warmup, 20 % linear decay)"},
        "best_arm": best,
        "speedup": report[best]["speedup"] if best else None,
        "speedup_including_small": report[best]["speedup_including_small"] if best else None,
        "arms": report,
        "wall_minutes": round((time.perf_counter() - began) / 60, 1),
    }
    _plot(curves, work / "convergence.png")
    (work / "convergence.md").write_text(_table(result))
    (work / "convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        for name in ("convergence.json", "convergence.md", "convergence.png"):
            shutil.copy(work / name, results / name)
    print(json.dumps(result) if args.json else _table(result))


def _reinit(directory: Path) -> None:
    """Replace testing's large random draw by transformers' own initialisation (what 'from scratch' means)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import torch

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory)


def _plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        if curve:
            style = "--" if name.startswith("random") else ":" if name == "small_pretrain" else "-"
            ax.plot(*zip(*curve), style, label=name, linewidth=1.5)
    ax.set_xlabel("tokens (of this arm)")
    ax.set_ylabel("eval loss")
    ax.set_title("continued pretraining after growth vs random initialisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _x(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


def _table(result: dict) -> str:
    rows = ["| arm | start eval loss | final eval loss | tokens to reach random init's final | speedup | incl. small model | minutes |",
            "|---|---|---|---|---|---|---|"]
    for name, arm in result["arms"].items():
        reached = arm["tokens_to_baseline_final"]
        speed = arm.get("speedup")
        speed_text = "—" if "speedup" not in arm else ("not reached" if speed is None else f"{'≥ ' if arm['speedup_lower_bound'] else ''}{speed:.2f}x")
        incl = arm.get("speedup_including_small")
        rows.append(f"| {name} | {arm['start_eval_loss']:.3f} | {arm['final_eval_loss']:.3f} | "
                    f"{'—' if reached is None else f'{reached:,.0f}'} | {speed_text} | "
                    f"{'—' if incl is None else f'{incl:.2f}x'} | {arm['seconds'] / 60:.1f} |")
    head = (f"# Convergence after growth\n\n{result['corpus']}; small model {result['small']['params']:,} parameters, "
            f"{result['small']['tokens']:,} tokens; large arms {result['large']['tokens_per_arm']:,} tokens each "
            f"({result['large']['params_width']:,} wide / {result['large']['params_width_depth']:,} wide+deep / "
            f"{result['large']['params_depth']:,} deep parameters). "
            f"Best growth arm: {result['best_arm']} — speedup {_x(result['speedup'])}, including the small model "
            f"{_x(result['speedup_including_small'])}.\n\n")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
