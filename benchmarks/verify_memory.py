"""`hyperclone verify` in its two modes and by default, on a ~0.5 GB and a ~5 GB grown output: time and peak RSS.

Both outputs are bf16 llamas grown from bf16 sources (the larger: the 0.5 GB source of
grow_throughput.py grown x3 in width and to 20 layers). Each verify is a child process, as a user
runs it; in-memory verify of the larger output needs ~16 GB, which this 24 GB machine has.
Goals (issue 16): the default mode stays under 4 GB peak RSS at any size, and the streamed mode
takes at most 1.5x the in-memory time where both fit. Results go to results/verify_memory.json.

    python benchmarks/verify_memory.py [--workdir DIR]
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

from benchmarks_machine import machine

GENERATE = r"""
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging; logging.disable_progress_bar()
hidden, ffn = int(sys.argv[2]), int(sys.argv[3])
cfg = AutoConfig.for_model("llama", vocab_size=32000, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=16,
                           num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1], max_shard_size="5GB")
"""

OUTPUTS = {  # name: (source hidden, source FFN, target)
    "0.5GB": (512, 1408, "2x"),
    "5GB": (1024, 2816, None),  # width 3, 20 layers
}


def verify(src: Path, grown: Path, mode: list[str]) -> dict:
    from hyperclone.testing import run_measuring_rss

    exe = shutil.which("hyperclone")
    start = time.perf_counter()
    proc, peak = run_measuring_rss([exe, "verify", str(src), str(grown), "--json", *mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    figures = json.loads(proc.stdout.read().decode() or "{}")
    return {"seconds": round(seconds, 2), "peak_rss_bytes": peak, "passed": figures.get("passed"),
            "streamed": figures.get("streamed"), "max_abs_diff": figures.get("max_abs_diff")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hc-verify-", dir=args.workdir))
    exe = shutil.which("hyperclone")
    rows = []
    try:
        for name, (hidden, ffn, target) in OUTPUTS.items():
            src, grown = work / f"src-{name}", work / f"grown-{name}"
            subprocess.run([sys.executable, "-c", GENERATE, str(src), str(hidden), str(ffn)], check=True)
            grow = [exe, "grow", str(src), "-o", str(grown)] + (["--to", target] if target else ["--to", "3x", "--layers", "20"])
            subprocess.run(grow, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            size = sum(f.stat().st_size for f in grown.glob("*.safetensors"))
            row = {"output": name, "output_bytes": size, "modes": {}}
            for mode, flags in (("default", []), ("streamed", ["--stream"]), ("in_memory", ["--no-stream"])):
                row["modes"][mode] = verify(src, grown, flags)
            m = row["modes"]
            row["streamed_over_in_memory_time"] = round(m["streamed"]["seconds"] / m["in_memory"]["seconds"], 3)
            rows.append(row)
            print(f"{name} ({size / 1e9:.2f} GB): " + ", ".join(
                f"{k} {v['seconds']:.1f} s {v['peak_rss_bytes'] / 2**30:.2f} GiB ({'streamed' if v['streamed'] else 'in memory'}, "
                f"{'PASS' if v['passed'] else 'FAIL'})" for k, v in m.items())
                + f"; streamed/in-memory time {row['streamed_over_in_memory_time']:.2f}", flush=True)
            shutil.rmtree(grown)
            shutil.rmtree(src)
        result = {"benchmark": "verify_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "outputs": rows,
                  "goals": {"default_peak_rss_under_bytes": 4 * 2**30, "streamed_over_in_memory_time_at_most": 1.5}}
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "verify_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
