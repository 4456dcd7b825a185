"""Never lose a user's data: --force refuses what hyperclone did not write, one writer per output (a real
second process holds the lock), verify fails on damaged weights anywhere, damaged checkpoints are named."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hyperclone
from hyperclone.manifest import sha256_file
from hyperclone.testing import save_tiny_model
from tests.test_cli import ENV, run
from tests.test_scale import mounted_tmpfs
from tests.test_train import DATA

TRAIN = ["--data", DATA, "--seq-len", "32", "--batch-size", "2", "--trackers", "none"]


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its bytes' hash: what must survive a refused command unchanged."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, words: str) -> None:
    """Exit 2 and one error line (after progress bars, if work had started) holding `words`."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and words in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in result.stderr


def test_force_never_writes_over_the_source_or_around_it(tiny, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    src = shutil.copytree(tiny("llama"), parent / "small")
    (parent / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(run("grow", str(src), "--to", "2x", "-o", str(src), "--force"), "is or contains the source")
    refused(run("grow", str(src), "--to", "2x", "-o", str(parent), "--force"), "is or contains the source")
    refused(run("grow", "small", "--to", "2x", "-o", ".", "--force", cwd=parent), "is or contains the source")
    refused(run("grow", str(src), "--to", "2x", "-o", str(src / "inner")), "lies inside the source")
    refused(run("grow", str(src / "model.safetensors"), "--to", "2x", "-o", str(src), "--force"), "is or contains the source")
    assert snapshot(tmp_path) == before


def test_force_replaces_a_grown_output_but_not_the_working_directory(tiny, tmp_path):
    src = tiny("llama")
    out = tmp_path / "g"
    assert run("grow", str(src), "--to", "2x", "-o", str(out)).returncode == 0
    refused(run("grow", str(src), "--to", "3x", "-o", ".", "--force", cwd=out), "current directory")
    (out / "notes.txt").write_text("mine")
    refused(run("grow", str(src), "--to", "3x", "-o", str(out), "--force"), "notes.txt")
    (out / "notes.txt").unlink()
    look_alike = tmp_path / ".g.partial"  # named like an interrupted grow's work directory, but not one
    look_alike.mkdir()
    (look_alike / "thesis.pdf").write_text("mine")
    refused(run("grow", str(src), "--to", "3x", "-o", str(out), "--force"), "thesis.pdf")
    shutil.rmtree(look_alike)
    assert run("grow", str(src), "--to", "3x", "-o", str(out), "--force").returncode == 0
    manifest = json.loads((out / "growth.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir())  # it names every file it wrote


def test_train_force_replaces_only_its_own_runs(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    out = tmp_path / "run"
    assert run("train", "--model", str(model), *TRAIN, "--max-steps", "2", "-o", str(out)).returncode == 0
    assert (out / "hyperclone_run.json").is_file()
    assert run("train", "--model", str(model), *TRAIN, "--max-steps", "3", "-o", str(out), "--force").returncode == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # a fresh run: 3 steps and the final eval
    (out / "mine.txt").write_text("keep")
    refused(run("train", "--model", str(model), *TRAIN, "--max-steps", "2", "-o", str(out), "--force"), "mine.txt")
    other = tmp_path / "other"
    other.mkdir()
    (other / "paper.tex").write_text("keep")
    refused(run("train", "--model", str(model), *TRAIN, "--max-steps", "2", "-o", str(other), "--force"), "not a training run")
    assert (out / "mine.txt").read_text() == "keep" and (other / "paper.tex").read_text() == "keep"


def _start(args: list[str], ready: Path) -> subprocess.Popen:
    """A real hyperclone process, stopped (SIGSTOP) as soon as it holds its output's lock."""
    proc = subprocess.Popen([shutil.which("hyperclone"), *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the first run never took its lock"
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    return proc


def test_a_second_grow_into_the_same_output_is_refused_while_the_first_runs(tmp_path):
    src = save_tiny_model("llama", tmp_path / "src", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, vocab_size=4096)
    out = tmp_path / "out"
    args = ["grow", str(src), "--to", "3x", "-o", str(out), "--shard-size", "2MB"]
    first = _start(args, tmp_path / ".out.partial" / ".hyperclone-lock")
    try:
        for extra in ([], ["--resume"], ["--force"], ["--resume", "--force"], ["--width", "2", "--resume"]):
            second = run(*args, *extra)
            refused(second, f"being written by another hyperclone process (pid {first.pid}")
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert run("verify", str(src), str(out)).returncode == 0
    assert not (out / ".hyperclone-lock").exists() and not (tmp_path / ".out.partial").exists()


def test_a_second_train_into_a_running_run_is_refused(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    out = tmp_path / "run"
    first = _start(["train", "--model", str(model), *TRAIN, "--max-steps", "100000", "--save-every", "1000", "-o", str(out)],
                   out / "hyperclone_run.json")  # locked and marked: a running run
    try:
        refused(run("train", "--model", str(model), *TRAIN, "-o", str(out), "--resume"), f"pid {first.pid}")
        refused(run("train", "--model", str(model), *TRAIN, "-o", str(out), "--force"), f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


def _damaged_embedding_row(tmp_path, src: Path, grown: Path) -> tuple[Path, int]:
    """A copy of `grown` with 0.5 added to the embedding row of a token id the verify batch never samples."""
    damaged = shutil.copytree(grown, tmp_path / "damaged")
    sampled = set(torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0)).flatten().tolist())
    row = next(i for i in range(4096) if i not in sampled)
    tensors = load_file(damaged / "model.safetensors")
    tensors["model.embed_tokens.weight"][row] += 0.5
    save_file(tensors, damaged / "model.safetensors", metadata={"format": "pt"})
    return damaged, row


@pytest.mark.parametrize("stream", [False, True])
def test_verify_fails_on_a_damaged_embedding_row_no_batch_reaches(stream, tiny, tmp_path):
    src = tiny("llama", vocab_size=4096)
    grown = hyperclone.grow(src, "2x", tmp_path / "g", progress=False)
    damaged, _ = _damaged_embedding_row(tmp_path, src, grown)
    changed = run("verify", str(src), str(damaged), "--json", *(["--stream"] if stream else []))
    assert changed.returncode == 1 and "model.safetensors" in " ".join(json.loads(changed.stdout)["damaged_shards"])
    result = hyperclone.verify(src, damaged, stream=stream, checksums=False)  # the function check alone
    assert result["max_abs_diff"] <= 1e-4  # the sampled tokens never reach that row ...
    assert not result["passed"] and result["embedding_max_abs_diff"] >= 0.5 and result["embedding_rows"] == 4096  # ... every-id check does


def test_verify_fails_on_a_damaged_lm_head_row(tiny, tmp_path):
    src = tiny("llama", vocab_size=4096)
    grown = hyperclone.grow(src, "2x", tmp_path / "g", progress=False)
    tensors = load_file(grown / "model.safetensors")
    tensors["lm_head.weight"][1234] += 0.5  # every lm_head row makes a logit at every position
    save_file(tensors, grown / "model.safetensors", metadata={"format": "pt"})
    result = hyperclone.verify(src, grown, checksums=False)
    assert not result["passed"] and result["max_abs_diff"] > 1e-2


def test_resume_skips_a_damaged_checkpoint_only_when_an_older_one_is_intact(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    out = tmp_path / "run"
    args = ["--model", str(model), *TRAIN, "--max-steps", "6", "--save-every", "2", "--keep", "3", "-o", str(out)]
    assert run("train", *args).returncode == 0
    (out / "checkpoints" / "step-6" / "optimizer.bin").write_bytes(os.urandom(64))  # random bytes
    resumed = run("train", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-4" in resumed.stderr and "step-6 (optimizer.bin" in resumed.stderr
    for step in (2, 4, 6):  # now every checkpoint is damaged: truncated model files
        weights = out / "checkpoints" / f"step-{step}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    refused(run("train", *args, "--resume"), "checkpoint")
    lines = run("train", *args, "--resume").stderr
    assert "step-6 is damaged (model.safetensors has 100 bytes" in lines and "--force" in lines


def test_interrupting_training_says_how_to_continue(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    out = tmp_path / "run"
    proc = subprocess.Popen([shutil.which("hyperclone"), "train", "--model", str(model), *TRAIN, "--max-steps", "100000",
                             "-o", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "training stopped" in err and "--resume" in err and "grow" not in err


@pytest.fixture
def few_inodes(tmp_path):
    """A real 64 MB filesystem that holds at most 40 files: bytes to spare, files not."""
    yield from mounted_tmpfs(tmp_path, "size=64m,nr_inodes=40")


def test_a_disk_that_fills_while_replacing_an_output_says_resume_force(tiny, few_inodes):
    src = tiny("llama")
    out = few_inodes / "out"
    assert run("grow", str(src), "--to", "2x", "-o", str(out)).returncode == 0
    kept = snapshot(out)
    filler = few_inodes / "filler"
    filler.mkdir()
    for i in range(os.statvfs(few_inodes).f_ffree - 6):  # leave room for a few files only
        (filler / str(i)).touch()
    result = run("grow", str(src), "--to", "3x", "-o", str(out), "--force", "--shard-size", "20kB")
    refused(result, "--resume --force")
    assert "disk filled up" in result.stderr
    assert snapshot(out) == kept  # the output being replaced is untouched
    shutil.rmtree(filler)
    resumed = run("grow", str(src), "--to", "3x", "-o", str(out), "--force", "--shard-size", "20kB", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert run("verify", str(src), str(out)).returncode == 0
