"""`hyperclone consolidate`: peak memory and time against loading the whole model to save it.

Float32 llamas at two sizes, both larger than consolidate's read window (`--hidden 2048`, 4 and 16
layers: 0.7 and 2.7 GB of weights), are each trained for one step with AdamW by `hyperclone train --checkpoint-format dcp`, so its checkpoint is
a real one (weights, both Adam moments, schedule, checksums). Then, each as a child process of its own:
`hyperclone consolidate` (tensors read a group at a time and streamed into shards), and the plain way it
replaced (the whole model built, the checkpoint loaded into it, `save_pretrained`), in the same run. Peak
resident memory is sampled every 20 ms; a process that only imports what consolidate imports is the
floor both stand on. Both outputs are checked to hold the same tensors.

    python benchmarks/consolidate_memory.py [--hidden 2048] [--layers 4,16] [--record]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from benchmarks_machine import machine

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")  # real text, no download
ENV_KEYS = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}

PLAIN = r"""
import sys, shutil, torch, torch.distributed.checkpoint as dcp
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
checkpoint, out = sys.argv[1], Path(sys.argv[2])
config = AutoConfig.from_pretrained(checkpoint)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.to_empty(device="cpu")
dcp.load({"model": model.state_dict()}, checkpoint_id=checkpoint, no_dist=True)
model.tie_weights()
model.save_pretrained(str(out))
"""

FLOOR = "import torch, transformers, torch.distributed.checkpoint, hyperclone.train.checkpoint, hyperclone.io.writer"


def measured(cmd: list[str], env: dict) -> dict:
    from hyperclone.testing import run_measuring_rss

    start = time.perf_counter()
    proc, peak = run_measuring_rss(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_bytes": peak}


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    def tensors(directory: Path) -> dict:
        found = {}
        for file in sorted(directory.glob("*.safetensors")):
            with safe_open(str(file), "pt") as fh:
                found.update({key: fh.get_tensor(key) for key in fh.keys()})
        return found

    x, y = tensors(a), tensors(b)
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def one_size(exe: str, hidden: int, layers: int, work: Path, env: dict) -> dict:
    """Train one step into a DCP checkpoint, then consolidate it both ways; the floor is measured by the caller."""
    from hyperclone.testing import save_tiny_model

    model = save_tiny_model("llama", work / "model", vocab_size=300, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    subprocess.run([exe, "train", "--model", str(model), "--data", DATA, "-o", str(work / "run"), "--max-steps", "1",
                    "--save-every", "1", "--checkpoint-format", "dcp", "--seq-len", "32", "--batch-size", "1",
                    "--optimizer", "adamw", "--trackers", "none"], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = work / "run" / "checkpoints" / "step-1"
    ours = measured([exe, "consolidate", str(checkpoint), "-o", str(work / "ours")], env)
    plain = measured([sys.executable, "-c", PLAIN, str(checkpoint), str(work / "plain")], env)
    return {"layers": layers, "model_weight_bytes": weights, "consolidate": ours, "whole_model": plain,
            "same_tensors": same_tensors(work / "ours", work / "plain")}


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", default="4,16", help="model sizes: layer counts, comma-separated")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/consolidate_memory.json")
    args = ap.parse_args()
    from hyperclone.train.checkpoint import READ_BYTES

    env = {**os.environ, **ENV_KEYS}
    exe = shutil.which("hyperclone")
    floor = measured([sys.executable, "-c", FLOOR], env)
    rows, gib = [], 2**30
    for layers in map(int, args.layers.split(",")):
        work = Path(tempfile.mkdtemp(prefix="hc-consolidate-", dir=args.workdir))
        try:
            row = one_size(exe, args.hidden, layers, work, env)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ours, plain = (row[k]["peak_rss_bytes"] - floor["peak_rss_bytes"] for k in ("consolidate", "whole_model"))
        row.update(ours_above_floor_bytes=ours, whole_model_above_floor_bytes=plain, memory_ours_over_whole_model=round(ours / plain, 3),
                   time_ours_over_whole_model=round(row["consolidate"]["seconds"] / row["whole_model"]["seconds"], 3))
        rows.append(row)
        print(f"{row['model_weight_bytes'] / 1e9:.2f} GB of float32 weights ({layers} layers): hyperclone consolidate peaked "
              f"{ours / gib:.2f} GiB above the floor in {row['consolidate']['seconds']:.1f} s; the whole model loaded and saved "
              f"{plain / gib:.2f} GiB in {row['whole_model']['seconds']:.1f} s ({row['memory_ours_over_whole_model']}x the memory, "
              f"{row['time_ours_over_whole_model']}x the time); same tensors: {row['same_tensors']}", flush=True)
    print(f"floor (a process that imports what consolidate imports): {floor['peak_rss_bytes'] / gib:.2f} GiB; "
          f"read window {READ_BYTES / gib:.2f} GiB")
    result = {"benchmark": "consolidate_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "hidden": args.hidden,
              "read_bytes": READ_BYTES, "floor": floor, "sizes": rows}
    if args.record:
        (Path(__file__).resolve().parent / "results" / "consolidate_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
