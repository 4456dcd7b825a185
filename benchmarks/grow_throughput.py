"""Grow throughput and memory against a plain copy and a naive in-memory grow, measured in the same run.

For a bf16 and an fp32 llama source (the issue's 0.5 GB bf16 shape: hidden 1024, FFN 2816, 16
layers, vocab 32000), and the targets width x2, width x3 and the `moe-8x` upcycle:

- `hyperclone grow` as a user runs it (a child process: start-up, planning, source sha256,
  growth, fsync), with one worker and with the default (the CPU cores); wall time, bytes written
  per second and peak RSS;
- a plain copy of the same output bytes (read, write, fsync), run right after each grow so both
  meet the disk in the same state; the ratio is grow bytes/s over copy bytes/s from the medians of
  --repeats alternating runs (this machine's virtual disk varies by up to 2x from run to run);
- a naive in-memory grow, what the reference HyperCloning code does on today's transformers:
  transformers loads the source, each tensor is tiled and divided with torch (the dense FFN copied
  into every expert for moe-8x), the grown model is built on the meta device, assigned its
  weights and written with save_pretrained, then fsync'd; wall time and peak RSS.

Every hyperclone output is verified (default verify mode). Results go to results/grow_throughput.json.

    python benchmarks/grow_throughput.py [--workdir DIR] [--repeats 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
cfg = AutoConfig.for_model("llama", vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                           num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, sys.argv[2]))
model.save_pretrained(sys.argv[1], max_shard_size="5GB")
"""

# The reference code's recipe on today's transformers: load, tile and divide with torch, save.
NAIVE = r"""
import os, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging; logging.disable_progress_bar()
src, out, target = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
cfg, n = model.config.to_dict(), 3 if target == "3x" else 2 if target == "2x" else 1
state, source = {}, model.state_dict()
for name, w in source.items():
    if target == "moe-8x":  # the dense FFN copied into 8 experts (transformers keeps them fused in memory)
        if name.endswith("mlp.gate_proj.weight"):
            layer = name[: -len(".mlp.gate_proj.weight")]
            gate_up = torch.cat([w, source[f"{layer}.mlp.up_proj.weight"]])
            state[f"{layer}.mlp.experts.gate_up_proj"] = gate_up.unsqueeze(0).repeat(8, 1, 1)
            state[f"{layer}.mlp.experts.down_proj"] = source[f"{layer}.mlp.down_proj.weight"].unsqueeze(0).repeat(8, 1, 1)
        elif ".mlp." not in name:
            state[name] = w
        continue
    if name.endswith("embed_tokens.weight"):
        state[name] = w.repeat(1, n)
    elif w.dim() == 1:
        state[name] = w.repeat(n)
    else:  # every other matrix reads and/or writes the residual: W.repeat(n, n) / n (lm_head: columns only)
        state[name] = (w.repeat(1, n) if name == "lm_head.weight" else w.repeat(n, n)) / n
if target == "moe-8x":
    cfg.update(model_type="mixtral", num_local_experts=8, num_experts_per_tok=2, architectures=["MixtralForCausalLM"])
    for layer in range(cfg["num_hidden_layers"]):
        state[f"model.layers.{layer}.mlp.gate.weight"] = torch.randn(8, cfg["hidden_size"], dtype=model.dtype) * 0.02
else:
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        cfg[key] *= n
    cfg["head_dim"] = model.config.head_dim
grown_config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
with torch.device("meta"):
    grown = AutoModelForCausalLM.from_config(grown_config, dtype=model.dtype)
del model
grown.load_state_dict(state, strict=True, assign=True)
grown.save_pretrained(out)
for f in out.iterdir():
    with open(f, "rb+") as fh:
        os.fsync(fh.fileno())
"""


def plain_copy(files: list[Path], dst: Path) -> float:
    """Seconds to read `files` and write them to `dst` with fsync, as a plain copy program would."""
    dst.mkdir()
    start = time.perf_counter()
    for f in files:
        with open(f, "rb") as r, open(dst / f.name, "wb") as w:
            while block := r.read(1 << 24):
                w.write(block)
            w.flush()
            os.fsync(w.fileno())
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    return seconds


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process; a failure ends the benchmark."""
    from hyperclone.testing import run_measuring_rss

    start = time.perf_counter()
    proc, peak = run_measuring_rss(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed with exit code {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
    return time.perf_counter() - start, peak


def output_bytes(directory: Path) -> tuple[list[Path], int]:
    files = sorted(directory.glob("*.safetensors"))
    return files, sum(f.stat().st_size for f in files)


def one_case(work: Path, src: Path, target: str, workers: list[int], repeats: int) -> dict:
    exe = shutil.which("hyperclone")
    case: dict = {"target": target, "hyperclone": {}}
    grown = work / "grown"
    for count in workers:
        runs = []
        for _ in range(repeats):
            shutil.rmtree(grown, ignore_errors=True)
            seconds, rss = timed([exe, "grow", str(src), "--to", target, "-o", str(grown), "--workers", str(count)])
            files, size = output_bytes(grown)
            copy_seconds = plain_copy(files, work / "copy")
            runs.append({"seconds": round(seconds, 2), "bytes_per_s": round(size / seconds), "peak_rss_bytes": rss,
                         "copy_seconds": round(copy_seconds, 2), "copy_bytes_per_s": round(size / copy_seconds)})
        case["output_bytes"] = size
        grow_s, copy_s = (statistics.median(r[k] for r in runs) for k in ("seconds", "copy_seconds"))
        case["hyperclone"][f"workers={count}"] = {
            "runs": runs,
            "median_seconds": round(grow_s, 2),
            "median_copy_seconds": round(copy_s, 2),
            "ratio_to_copy": round(copy_s / grow_s, 3),  # grow bytes/s over copy bytes/s, from the medians
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        }
    verify = subprocess.run([exe, "verify", str(src), str(grown), "--json", "--seq-len", "16", "--batch", "1"],
                            capture_output=True, text=True)
    figures = json.loads(verify.stdout) if verify.stdout else {"passed": None, "error": verify.stderr[-300:]}
    case["verify"] = {k: figures.get(k) for k in ("passed", "max_abs_diff", "embedding_max_abs_diff", "streamed", "seconds")}
    shutil.rmtree(grown)
    naive_out = work / "naive"
    seconds, rss = timed([sys.executable, "-c", NAIVE, str(src), str(naive_out), target])
    case["naive_in_memory"] = {"seconds": round(seconds, 2), "peak_rss_bytes": rss, "bytes": output_bytes(naive_out)[1]}
    shutil.rmtree(naive_out)
    default = case["hyperclone"][f"workers={workers[-1]}"]
    case["ratio_wall_to_naive"] = round(default["median_seconds"] / seconds, 3)
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="alternating grow/copy runs per case (medians are compared)")
    ap.add_argument("--quick", action="store_true", help="bf16, width x2 only")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    from hyperclone.grow import default_workers

    workers = sorted({1, default_workers()})
    work = Path(tempfile.mkdtemp(prefix="hc-bench-", dir=args.workdir))
    cases = []
    try:
        for dtype in ("bfloat16",) if args.quick else ("bfloat16", "float32"):
            src = work / f"source-{dtype}"
            subprocess.run([sys.executable, "-c", GENERATE, str(src), dtype], check=True)
            source_bytes = output_bytes(src)[1]
            for target in ("2x",) if args.quick else ("2x", "3x", "moe-8x"):
                case = {"source_dtype": dtype, "source_bytes": source_bytes, **one_case(work, src, target, workers, args.repeats)}
                cases.append(case)
                hc = case["hyperclone"]
                print(f"{dtype} {target}: {case['output_bytes'] / 1e9:.2f} GB; "
                      + ", ".join(f"{k}: {v['ratio_to_copy']:.2f}x copy, {v['median_seconds']:.1f} s, "
                                  f"{v['peak_rss_bytes'] / 2**30:.2f} GiB" for k, v in hc.items())
                      + f"; naive {case['naive_in_memory']['seconds']:.1f} s, {case['naive_in_memory']['peak_rss_bytes'] / 2**30:.2f} GiB"
                      + f" -> wall {case['ratio_wall_to_naive']:.2f}x naive; verify {case['verify']['passed']}", flush=True)
            shutil.rmtree(src)
        result = {"benchmark": "grow_throughput", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "workers": workers,
                  "repeats": args.repeats, "cases": cases}
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "grow_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
