"""Why the default convergence run falls short of 2x: reruns single arms of a finished run with one
setting changed — the learning rate after growth, the noise scale, the warmup after growth, and the
random-init baseline's optimizer (MuonClip) — against the same baselines.

    python benchmarks/convergence_diagnostics.py --run convergence-out [--record]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import convergence  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, required=True, help="the --out directory of a finished convergence.py run")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    run = args.run
    result = json.loads((run / "convergence.json").read_text())
    steps = result["large"]["steps"]
    eval_every = max(1, steps // 20)
    data = run / "stdlib.jsonl"
    total = result["large"]["tokens_per_arm"]
    baseline_adamw = convergence.eval_curve(run / "random_init")[-1][1]
    found = {}

    def arm(name, model, optimizer, lr, warmup=0.05):
        convergence.LR = lr
        seconds = convergence.train(model, data, run / name, steps, optimizer, eval_every, warmup)
        curve = convergence.eval_curve(run / name)
        return curve, seconds

    def against_adamw_baseline(label, curve):
        reached = convergence.tokens_to_reach(curve, baseline_adamw)
        found[label] = {"final_eval_loss": curve[-1][1], "eval_after_first_interval": curve[1][1],
                        "tokens_to_random_init_final": reached, "speedup": total / reached if reached else None}

    import hyperclone

    default = convergence.eval_curve(run / "hyperclone_noise")
    against_adamw_baseline("grown_adamw_default (lr 2e-3, warmup 5 %, noise 0.01)", default)
    against_adamw_baseline("grown_adamw_lr_5e-4", arm("diag_grown_lr_quarter", run / "grown-noise", "adamw", 5e-4)[0])
    against_adamw_baseline("grown_adamw_warmup_20pct", arm("diag_grown_warmup20", run / "grown-noise", "adamw", 2e-3, 0.2)[0])
    noisy = hyperclone.grow(run / "small" / "final", {"width": 2, "noise": 0.05}, run / "grown-noise05", force=True, progress=False)
    against_adamw_baseline("grown_adamw_noise_0.05", arm("diag_grown_noise05", noisy, "adamw", 2e-3)[0])
    curve, seconds = arm("diag_random_init_muonclip", run / "random-wide", "muonclip", 2e-3)
    muon_baseline = curve[-1][1]
    grown_muon = convergence.eval_curve(run / "hyperclone_noise_muonclip")
    reached = convergence.tokens_to_reach(grown_muon, muon_baseline)
    found["random_init_muonclip"] = {"final_eval_loss": muon_baseline}
    found["grown_muonclip_vs_random_muonclip"] = {"tokens_to_random_init_final": reached, "speedup": total / reached if reached else None}
    out = {"benchmark": "convergence_diagnostics", "run": result["date"], "machine": result["machine"], "findings": found}
    (run / "convergence_diagnostics.json").write_text(json.dumps(out, indent=2) + "\n")
    if args.record:
        shutil.copy(run / "convergence_diagnostics.json", HERE / "results" / "convergence_diagnostics.json")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
