"""Data mixtures and two-stage pretraining (MiniCPM): weighted sources, the decay-phase data taking over
at the decay's first step, exact resume across the switch. Real text (standard-library packages),
real training steps, a real SIGKILL."""
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

import hyperclone
from hyperclone.errors import UserError
from hyperclone.train.data import load_tokenizer, mixed_blocks, mixture

LIB = Path(sysconfig.get_paths()["stdlib"])
A, B, C = str(LIB / "json"), str(LIB / "html"), str(LIB / "wsgiref")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
QUICK = dict(seq_len=64, batch_size=4, trackers="none", progress=False, optimizer="adamw", lr=3e-3)


def records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_mixture_spellings_and_bad_weights():
    assert mixture(A) == mixture([{"path": A}]) and mixture(A)[0].weight == 1.0
    assert [(s.path, s.weight) for s in mixture([f"{A}=3", f"{B}=1"])] == [(A, 3.0), (B, 1.0)]
    assert [s.weight for s in mixture([{"path": A, "weight": 0.7}, {"path": B, "weight": 0.3}])] == [0.7, 0.3]
    for bad, says in ((f"{A}=0", "positive"), (f"{A}=-1", "positive"), ([{"path": A, "wieght": 1}], "{path, weight}"),
                      ([{"weight": 1}], "{path, weight}"), ([], "at least one"), ([3], "a path or")):
        with pytest.raises(UserError, match=says.replace("{", r"\{").replace("}", r"\}")):
            mixture(bad)


def test_interleaved_blocks_follow_the_weights_and_the_seed():
    tok = load_tokenizer(A, 300)
    sources = mixture([f"{A}=3", f"{B}=1"])
    train, held = mixed_blocks(sources, tok, 32, "text", False, 0, 0.05)
    again, _ = mixed_blocks(sources, tok, 32, "text", False, 0, 0.05)
    first = train.select(range(1000))
    share = sum(1 for s in first["source"] if s == 0) / 1000
    assert abs(share - 0.75) < 0.05, share  # binomial spread at n=1000 is 0.014
    assert first["input_ids"] == again.select(range(1000))["input_ids"]  # same seed, same order
    assert set(held["source"]) == {0, 1}  # each source holds out its own eval share
    other, _ = mixed_blocks(sources, tok, 32, "text", False, 1, 0.05)
    assert other.select(range(50))["input_ids"] != first.select(range(50))["input_ids"]


def test_training_logs_each_source_in_proportion(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    hyperclone.train(model=str(model), data=[{"path": A, "weight": 1}, {"path": B, "weight": 3}], out=str(tmp_path / "run"),
                     max_steps=60, **QUICK)
    drawn = [r["data"] for r in records(tmp_path / "run")]
    assert all(sum(d.values()) == 4 for d in drawn)  # one micro-batch of 4 blocks per step
    share = sum(d[B] for d in drawn) / (4 * len(drawn))
    assert abs(share - 0.75) < 0.1, share  # 240 blocks: binomial spread 0.028


def test_decay_data_takes_over_at_the_decays_first_step(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    hyperclone.train(model=str(model), data=A, decay_data=[f"{B}=1", f"{C}=1"], out=str(tmp_path / "run"), max_steps=20,
                     schedule="wsd", decay_fraction=0.25, warmup=2, **QUICK)
    rows = records(tmp_path / "run")
    peak = max(r["lr"] for r in rows)
    first_decay = next(r["step"] for r in rows if r["step"] > 2 and r["lr"] < peak)  # after the 2 warmup steps
    assert first_decay == 16  # 20 steps, the last 25 % decay
    for r in rows:
        assert set(r["data"]) == ({B, C} if r["step"] >= first_decay else {A}), r
    later = [r["data"] for r in rows if r["step"] >= first_decay]
    assert sum(d[B] for d in later) and sum(d[C] for d in later)


@pytest.mark.serial  # a kill timed against the run's checkpoints: run alone
def test_sigkill_resume_across_the_switch_ends_like_an_uninterrupted_run(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    args = ["train", "--model", str(model), "--data", f"{A}=2", "--data", f"{C}=1", "--decay-data", B, "--max-steps", "30",
            "--decay-fraction", "0.5", "--seq-len", "64", "--batch-size", "4", "--optimizer", "adamw", "--save-every", "10",
            "--trackers", "none"]
    exe = shutil.which("hyperclone")
    full = subprocess.run([exe, *args, "-o", str(tmp_path / "full")], capture_output=True, text=True, env=ENV, timeout=300)
    assert full.returncode == 0, full.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([exe, *args, "-o", str(killed)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-10" / "hyperclone_state.json").exists():  # before the switch at step 16
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([exe, *args, "-o", str(killed), "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = records(tmp_path / "full"), records(killed)
    assert [r["step"] for r in b] == list(range(1, 31))
    assert [r["data"] for r in a] == [r["data"] for r in b]  # the same blocks from the same sources, step by step
    assert abs(a[-1]["loss"] - b[-1]["loss"]) <= 1e-6 * abs(a[-1]["loss"])


def test_resumed_decay_branch_keeps_its_schedule(tiny, tmp_path):
    """A branch decays from its checkpoint's step; resuming it must not restart the decay at the resume step."""
    model = tiny("llama", vocab_size=300)
    stable = tmp_path / "stable"
    hyperclone.train(model=str(model), data=A, out=str(stable), max_steps=10, schedule="constant", warmup=0, save_every=10, **QUICK)
    settings = dict(model=str(model), data=A, max_steps=30, decay_from=str(stable / "checkpoints" / "step-10"), **QUICK)
    hyperclone.train(out=str(tmp_path / "whole"), **settings)
    part = tmp_path / "part"
    hyperclone.train(out=str(part), save_every=10, **settings)
    shutil.rmtree(part / "final")
    shutil.rmtree(part / "checkpoints" / "step-30")  # as if killed after step 20's checkpoint
    hyperclone.train(out=str(part), resume=True, save_every=10, **settings)
    whole, resumed = records(tmp_path / "whole"), records(part)
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in whole], rel=1e-9)


@pytest.mark.parametrize("settings, says", [
    (dict(data=f"{A}=0"), "--data: the weight"),
    (dict(data=A, decay_data=B, schedule="cosine"), "needs --schedule wsd"),
    (dict(data=A, decay_data=[{"path": B, "weight": "lots"}]), "--decay-data: the weight"),
])
def test_bad_mixtures_are_named(tiny, settings, says):
    with pytest.raises(UserError, match=says):
        hyperclone.train(model=str(tiny("llama", vocab_size=300)), **settings)
