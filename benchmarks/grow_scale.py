"""Grow at growing scale: peak RSS stays flat while the output grows, against a plain copy of the same bytes.

Generates a small bf16 llama, then for goals of about 0.25B, 0.5B, 1B and 2.1B parameters
(0.5, 1, 2 and 4.2 GB in bf16; larger ones with --sizes where the disk allows) it:
  1. grows it with `hyperclone grow --to <goal> --workers W` in a child process (peak RSS sampled),
  2. copies the grown shards with a plain read/write+fsync loop (the baseline: no arithmetic at all),
  3. verifies it with `hyperclone verify --stream` (one decoder layer in memory at a time).

    python benchmarks/grow_scale.py [--sizes 0.25B,0.5B,1B,2.1B] [--workers 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchmarks_machine import machine
from grow_throughput import plain_copy, timed

GENERATE = r"""
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging; logging.disable_progress_bar()
cfg = AutoConfig.for_model("llama", vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.25B,0.5B,1B,2.1B", help="Goal total_params, comma-separated.")
    ap.add_argument("--layers", type=int, default=32, help="Goal layer count (identity layers are inserted).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    exe = shutil.which("hyperclone")
    work = Path(tempfile.mkdtemp(prefix="hc-scale-", dir=args.workdir))
    rows = []
    try:
        src = work / "source"
        subprocess.run([sys.executable, "-c", GENERATE, str(src)], check=True)
        for size in args.sizes.split(","):
            goal = work / f"goal-{size}.yaml"
            goal.write_text(yaml.safe_dump({"total_params": size, "shape": {"layers": args.layers}}))
            plan = json.loads(subprocess.run([exe, "plan", str(src), "--to", str(goal), "--json"], check=True,
                                             capture_output=True, text=True).stdout)
            if shutil.disk_usage(work).free < 2.2 * plan["free_bytes_needed"]:
                print(f"{size}: skipped, the disk has too little room for the output and its copy")
                continue
            out = work / "grown"
            grow_s, grow_rss = timed([exe, "grow", str(src), "--to", str(goal), "-o", str(out), "--workers", str(args.workers)])
            shards = sorted(out.glob("*.safetensors"))
            copied = sum(f.stat().st_size for f in shards)
            copy_s = plain_copy(shards, work / "copy")
            verify_cmd = [exe, "verify", str(src), str(out), "--stream", "--json", "--seq-len", "16", "--batch", "1"]
            verify_s, verify_rss = timed(verify_cmd + ["--seed", "1"])  # RSS of a streamed verify alone
            verdict = json.loads(subprocess.run(verify_cmd, capture_output=True, text=True).stdout)
            shutil.rmtree(out)
            row = {
                "goal_total_params": size, "total_params": plan["total_params"], "output_bytes": copied,
                "shape": {k: plan["target_spec"][k] for k in ("hidden", "intermediate", "layers")},
                "grow_seconds": round(grow_s, 2), "grow_bytes_per_s": round(copied / grow_s),
                "copy_seconds": round(copy_s, 2), "copy_bytes_per_s": round(copied / copy_s),
                "ratio_grow_to_copy": round(copy_s / grow_s, 3), "grow_peak_rss_bytes": grow_rss,
                "verify_streamed_seconds": round(verify_s, 2), "verify_peak_rss_bytes": verify_rss,
                "verify_passed": verdict["passed"], "verify_max_abs_diff": verdict["max_abs_diff"],
            }
            rows.append(row)
            print(f"{size:>6}: {copied / 1e9:6.2f} GB  grow {row['grow_bytes_per_s'] / 1e6:6.1f} MB/s "
                  f"({row['ratio_grow_to_copy']:.2f}x copy)  grow RSS {grow_rss / 2**30:.2f} GiB  "
                  f"verify --stream {verify_s:5.1f} s RSS {verify_rss / 2**30:.2f} GiB  passed={verdict['passed']}")
        result = {"benchmark": "grow_scale", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                  "workers": args.workers, "includes": "process start, source sha256, growth, fsync", "runs": rows}
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "grow_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
