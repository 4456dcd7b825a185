"""Grow throughput and memory against a plain read+write copy, measured in the same run.

Generates a >= 1 GB bf16 llama checkpoint, then (1) copies it with a plain read/write loop and
(2) grows it with `hyperclone grow` in a child process, recording bytes/s of each, their ratio and
the grow's peak RSS. Both end with fsync so neither hides its writes in the page cache.

    python benchmarks/grow_throughput.py [--workdir DIR] [--target 2x] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks_machine import machine

GENERATE = r"""
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging; logging.disable_progress_bar()
cfg = AutoConfig.for_model("llama", vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=17,
                           num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=False)
with torch.device("cpu"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
model.save_pretrained(sys.argv[1], max_shard_size="2GB")
"""


def plain_copy(src_files: list[Path], dst: Path) -> int:
    dst.mkdir()
    total = 0
    for f in src_files:
        with open(f, "rb") as r, open(dst / f.name, "wb") as w:
            while block := r.read(1 << 24):
                w.write(block)
                total += len(block)
            w.flush()
            os.fsync(w.fileno())
    return total


def run_measuring_rss(cmd: list[str], **popen) -> int:
    """Run cmd; return its peak resident set size (the child alone); a failure ends the benchmark."""
    from hyperclone.testing import run_measuring_rss as measure

    proc, peak = measure(cmd, **popen)
    if proc.returncode:
        raise SystemExit(f"{cmd[1]} failed with exit code {proc.returncode}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--target", default="2x")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hc-bench-", dir=args.workdir))
    try:
        src = work / "source"
        subprocess.run([sys.executable, "-c", GENERATE, str(src)], check=True)
        src_files = sorted(src.glob("*.safetensors"))
        src_bytes = sum(f.stat().st_size for f in src_files)
        print(f"source: {src_bytes / 1e9:.2f} GB in {len(src_files)} shard(s)")

        t0 = time.perf_counter()
        copied = plain_copy(src_files, work / "copy")
        copy_s = time.perf_counter() - t0
        shutil.rmtree(work / "copy")

        exe = shutil.which("hyperclone")
        t0 = time.perf_counter()
        peak_rss = run_measuring_rss([exe, "grow", str(src), "--to", args.target, "-o", str(work / "grown")])
        grow_s = time.perf_counter() - t0
        out_bytes = sum(f.stat().st_size for f in (work / "grown").glob("*.safetensors"))

        verify = subprocess.run([exe, "verify", str(src), str(work / "grown"), "--json", "--seq-len", "16", "--batch", "1"],
                                capture_output=True, text=True)
        verdict = json.loads(verify.stdout) if verify.stdout else {"passed": None, "error": verify.stderr[-300:]}
        copy_bps, grow_bps = copied / copy_s, out_bytes / grow_s
        result = {
            "benchmark": "grow_throughput",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "target": args.target,
            "source_bytes": src_bytes,
            "output_bytes": out_bytes,
            "plain_copy": {"bytes": copied, "seconds": round(copy_s, 2), "bytes_per_s": round(copy_bps)},
            "grow": {"bytes_written": out_bytes, "seconds": round(grow_s, 2), "bytes_per_s": round(grow_bps),
                     "includes": "process start, source sha256, growth, fsync", "peak_rss_bytes": peak_rss},
            "ratio_grow_to_copy_bytes_per_s": round(grow_bps / copy_bps, 3),
            "peak_rss_over_output": round(peak_rss / out_bytes, 4),
            "verify": {k: verdict.get(k) for k in ("passed", "max_abs_diff", "argmax_agreement")},
        }
        print(json.dumps(result, indent=2))
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "grow_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
