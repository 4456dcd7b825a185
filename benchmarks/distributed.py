"""Bytes communicated per training token: data parallelism (DDP through Accelerate, 2 processes) against
DiLoCo (2 replica groups on torchft) syncing every H = 10, 50, 100 inner steps.

Measured, not computed: the bytes that crossed the loopback interface (/proc/net/dev) while real
`hyperclone train` processes ran on this machine, over gloo. Each setting runs twice, for n and 3n steps;
the difference in bytes over the difference in tokens is what training costs per token, with start-up
traffic (rendezvous, quorum set-up, loading) cancelled out. Every process's loopback traffic counts, so
run it on an otherwise idle machine. The parameter bytes a ring all-reduce would move are printed beside
the measurement as a check, never in its place.

    python benchmarks/distributed.py [--hidden 128] [--record]

Then the cost of checkpoints to training: one process trains a larger model (`--checkpoint-hidden`) for
20 steps with a torch.distributed.checkpoint save every 5, blocking or asynchronous, against the same run
without checkpoints; the extra wall-clock time per checkpoint is what training waited.

Last, memory per process: 2 processes train a larger model (`--memory-hidden`) with AdamW, data parallel
(each holds the whole model, its gradients and both Adam moments) and sharded with --fsdp (each holds
about half); the peak resident memory of the largest process during training is what `hyperclone train`
records with every step (`peak_memory`), beside that of a process that only imports Python, torch and
transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_machine import machine  # noqa: E402

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")  # real text, no download
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SEQ, BATCH = 64, 4  # per process (DDP) or per replica group (DiLoCo)


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])  # received on lo = sent on lo
    raise SystemExit("this benchmark reads the loopback interface's counters from /proc/net/dev (Linux)")


def _train_args(model: Path, out: Path, steps: int) -> list[str]:
    return ["--model", str(model), "--data", DATA, "-o", str(out), "--max-steps", str(steps), "--seq-len", str(SEQ),
            "--batch-size", str(BATCH), "--trackers", "none", "--optimizer", "adamw", "--force"]


def ddp_run(model: Path, work: Path, steps: int) -> None:
    accelerate = shutil.which("accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
           "-m", "hyperclone.train", *_train_args(model, work / "ddp", steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if done.returncode:
        raise SystemExit(f"the DDP run failed:\n{done.stderr[-2000:]}")


def diloco_run(model: Path, work: Path, steps: int, sync_every: int) -> None:
    from torchft.coordination import LighthouseServer

    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
    try:
        groups = [subprocess.Popen([shutil.which("hyperclone"), "train", *_train_args(model, work / f"group{i}", steps),
                                    "--diloco", "--sync-every", str(sync_every), "--lighthouse", lighthouse.address(),
                                    "--replicas", "2", "--replica-index", str(i), "--min-replicas", "2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for i in range(2)]
        failed = [err for g in groups for _, err in [g.communicate()] if g.returncode]
    finally:
        lighthouse.shutdown()
    if failed:
        raise SystemExit(f"a DiLoCo group failed:\n{failed[0][-2000:]}")


def per_token(run, steps: int) -> float:
    """Bytes per token between a run of `steps` and one of 3 x `steps` (2 processes or groups, BATCH x SEQ each)."""
    counts = []
    for n in (steps, 3 * steps):
        before = loopback_bytes()
        run(n)
        counts.append(loopback_bytes() - before)
    return (counts[1] - counts[0]) / (2 * steps * 2 * BATCH * SEQ)


def checkpoint_cost(model: Path, work: Path, steps: int = 20, every: int = 5) -> dict:
    """Seconds training waits per checkpoint, blocking and asynchronous (DCP), against no checkpoints."""
    walls = {}
    for mode, extra in (("none", []), ("blocking", ["--save-every", str(every), "--checkpoint-format", "dcp"]),
                        ("async", ["--save-every", str(every), "--checkpoint-format", "dcp", "--async-checkpoint"])):
        start = time.perf_counter()
        done = subprocess.run([shutil.which("hyperclone"), "train", *_train_args(model, work / f"ckpt-{mode}", steps), *extra],
                              capture_output=True, text=True, env=ENV)
        walls[mode] = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"the {mode} run failed:\n{done.stderr[-2000:]}")
    saves = steps // every
    return {"steps": steps, "checkpoints": saves, "wall_s": {k: round(v, 2) for k, v in walls.items()},
            "blocking_s_per_checkpoint": round((walls["blocking"] - walls["none"]) / saves, 3),
            "async_s_per_checkpoint": round((walls["async"] - walls["none"]) / saves, 3)}


def _last_peak(run: Path) -> int:
    """The peak memory of the largest process during training, from the run's last step record."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return steps[-1]["peak_memory"]


def memory_per_process(model: Path, work: Path, steps: int = 3) -> dict:
    """Peak resident memory of the largest of 2 processes during training, data parallel against
    FSDP2-sharded, in bytes; and that of a process that only imports what training imports."""
    launch = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
              "--mixed_precision", "no", "-m", "hyperclone.train"]
    args = ["--model", str(model), "--data", DATA, "--max-steps", str(steps), "--seq-len", str(SEQ), "--batch-size", "1",
            "--trackers", "none", "--optimizer", "adamw", "--force"]
    peaks = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        done = subprocess.run([*launch, *args, *extra, "-o", str(work / f"mem-{name}")], capture_output=True, text=True, env=ENV)
        if done.returncode:
            raise SystemExit(f"the {name} memory run failed:\n{done.stderr[-2000:]}")
        peaks[name] = _last_peak(work / f"mem-{name}")
    probe = "import torch, transformers, hyperclone.train.loop; from hyperclone.memory import peak_resident_memory as p; print(p())"
    runtime = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV).stdout)
    return {"runtime_bytes": runtime, "ddp_peak_bytes": peaks["ddp"], "fsdp_peak_bytes": peaks["fsdp"],
            "fsdp_over_ddp": round(peaks["fsdp"] / peaks["ddp"], 3),
            "fsdp_over_ddp_above_runtime": round((peaks["fsdp"] - runtime) / (peaks["ddp"] - runtime), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--checkpoint-hidden", type=int, default=512)
    parser.add_argument("--memory-hidden", type=int, default=1024)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/distributed.json")
    args = parser.parse_args()
    from hyperclone.testing import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = save_tiny_model("llama", work / "model", vocab_size=300, hidden_size=args.hidden,
                                intermediate_size=2 * args.hidden, num_hidden_layers=4)
        import hyperclone

        params = hyperclone.load_model(model).num_parameters()
        ring = 2 * params * 4 / (2 * BATCH * SEQ)  # float32 gradients, ring all-reduce over 2: each sends the whole once
        rows = [{"setting": "DDP (every step)", "bytes_per_token": per_token(lambda n: ddp_run(model, work, n), 10),
                 "ring_allreduce_bytes_per_token": ring}]
        for h in (10, 50, 100):
            rows.append({"setting": f"DiLoCo H={h}", "bytes_per_token": per_token(lambda n: diloco_run(model, work, n, h), h),
                         "ring_allreduce_bytes_per_token": ring / h})
        big = save_tiny_model("llama", work / "big", vocab_size=300, hidden_size=args.checkpoint_hidden,
                              intermediate_size=2 * args.checkpoint_hidden, num_hidden_layers=8)
        checkpoints = checkpoint_cost(big, work)
        checkpoints["model_parameters"] = hyperclone.load_model(big).num_parameters()
        large = save_tiny_model("llama", work / "large", vocab_size=300, hidden_size=args.memory_hidden,
                                intermediate_size=2 * args.memory_hidden, num_hidden_layers=8)
        memory = memory_per_process(large, work)
        memory["model_parameters"] = hyperclone.load_model(large).num_parameters()
    for row in rows:
        row["ddp_over_this"] = round(rows[0]["bytes_per_token"] / row["bytes_per_token"], 1)
        print(f"{row['setting']:>18}: {row['bytes_per_token']:>10,.0f} bytes/token measured "
              f"({row['ring_allreduce_bytes_per_token']:,.0f} for the parameters alone); DDP sends {row['ddp_over_this']}x this")
    print(f"checkpoints of a {checkpoints['model_parameters'] / 1e6:.1f} M-parameter model: training waited "
          f"{checkpoints['blocking_s_per_checkpoint']:.2f} s per blocking save, {checkpoints['async_s_per_checkpoint']:.2f} s per asynchronous one")
    gib = 2 ** 30
    print(f"memory of the largest of 2 processes training a {memory['model_parameters'] / 1e6:.0f} M-parameter model with AdamW: "
          f"data parallel {memory['ddp_peak_bytes'] / gib:.2f} GiB, FSDP2 {memory['fsdp_peak_bytes'] / gib:.2f} GiB "
          f"({memory['fsdp_over_ddp']}x; {memory['fsdp_over_ddp_above_runtime']}x above the {memory['runtime_bytes'] / gib:.2f} GiB "
          "that Python, torch and transformers take)")
    result = {"machine": machine(), "model_parameters": params, "seq": SEQ, "batch_per_process": BATCH, "processes": 2, "rows": rows,
              "checkpoints": checkpoints, "memory": memory}
    if args.record:
        (Path(__file__).resolve().parent / "results" / "distributed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
