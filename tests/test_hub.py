"""hf:// sources from a real huggingface_hub cache, offline: grow, verify and train resolve them
through the one resolver, in real subprocesses of the CLI."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from hyperclone.testing import hub_cache_entry

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")


def _run(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run([shutil.which("hyperclone") or sys.executable, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_grow_verify_and_train_an_hf_source_from_the_offline_cache(tiny, tmp_path):
    cache = tmp_path / "hub"
    snapshot = hub_cache_entry(tiny("qwen3"), cache, "someorg/tiny-qwen3")
    assert (snapshot / "model.safetensors").is_symlink()  # the library's own layout: snapshots link to blobs

    out = tmp_path / "grown"
    grow = _run(cache, "grow", "hf://someorg/tiny-qwen3", "--to", "2x", "-o", str(out))
    assert grow.returncode == 0, grow.stderr
    manifest = json.loads((out / "growth.json").read_text())
    assert "tiny-qwen3" in json.dumps(manifest)
    verify = _run(cache, "verify", "hf://someorg/tiny-qwen3", str(out), "--json")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout.strip().splitlines()[-1])["max_abs_diff"] <= 1e-4

    run = tmp_path / "run"
    train = _run(cache, "train", "--model", "hf://someorg/tiny-qwen3@main", "--data", DATA, "-o", str(run),
                 "--max-steps", "2", "--seq-len", "32", "--batch-size", "2", "--trackers", "none")
    assert train.returncode == 0, train.stderr
    assert (run / "final" / "model.safetensors").exists()
    assert sum("loss" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_revision_or_repo_not_in_the_cache_is_one_line(tiny, tmp_path):
    cache = tmp_path / "hub"
    hub_cache_entry(tiny("llama"), cache, "someorg/tiny-llama")
    for source in ("hf://someorg/tiny-llama@v9", "hf://someorg/absent"):
        for args in (["plan", source, "--to", "2x"], ["train", "--model", source, "--data", DATA, "-o", str(tmp_path / "r")]):
            result = _run(cache, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1 and "Hub cache" in result.stderr, result.stderr
            assert not (tmp_path / "r").exists()
