"""hf:// sources from a real huggingface_hub cache, offline: grow, verify and train resolve them
through the one resolver, in real subprocesses of the CLI."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import hyperclone
from hyperclone.testing import hub_cache_entry

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")


def _run(cache: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}
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


TOKEN = "hf_doNotLeakThisTokenAnywhere1234567890"


def _hub_source(tiny, tmp_path, family="qwen3", repo="someorg/tiny"):
    """A tiny model with a licensed card, laid out in a fresh Hub cache."""
    model = tmp_path / "published"
    shutil.copytree(tiny(family), model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny\n")
    cache = tmp_path / "hub"
    hub_cache_entry(model, cache, repo)
    return cache


def _files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_cards_of_a_grown_and_a_trained_model_say_where_they_came_from(tiny, tmp_path):
    from huggingface_hub import ModelCard

    cache = _hub_source(tiny, tmp_path)
    out, run = tmp_path / "grown", tmp_path / "run"
    grow = _run(cache, "grow", "hf://someorg/tiny", "--to", "2x", "-o", str(out), "--verify")
    assert grow.returncode == 0, grow.stderr
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "someorg/tiny" and "base_model_relation" not in card.data.to_dict()
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"hyperclone", "model-growth", "qwen3"} <= set(card.data.tags) and "mixture-of-experts" not in card.data.tags
    assert "max |Δlogit|" in card.text and "64 tokens compared" in card.text and "width x2" in card.text
    assert "README.md" in json.loads((out / "growth.json").read_text())["files"]

    train = _run(cache, "train", "--model", str(out), "--data", DATA, "-o", str(run), "--max-steps", "2",
                 "--seq-len", "32", "--batch-size", "2", "--trackers", "none")
    assert train.returncode == 0, train.stderr
    trained = ModelCard.load(run / "final" / "README.md")
    assert trained.data.base_model is None  # the grown base is local: no Hub page to point at
    assert trained.data.license == "apache-2.0"  # carried through the grown model's card
    assert "finetune" not in str(trained.data.to_dict())
    assert "tokens seen" in trained.text and "final eval loss" in trained.text and "![loss](loss.png)" in trained.text
    assert (run / "final" / "loss.png").is_file()

    direct = tmp_path / "direct"
    train = _run(cache, "train", "--model", "hf://someorg/tiny", "--data", DATA, "-o", str(direct), "--max-steps", "1",
                 "--seq-len", "32", "--batch-size", "2", "--trackers", "none")
    assert train.returncode == 0, train.stderr
    card = ModelCard.load(direct / "final" / "README.md")
    assert (card.data.base_model, card.data.to_dict()["base_model_relation"]) == ("someorg/tiny", "finetune")


def test_push_dry_run_lists_the_files_and_the_card_and_contacts_nothing(tiny, tmp_path):
    cache = _hub_source(tiny, tmp_path, family="qwen3_moe")
    out = tmp_path / "grown"
    assert _run(cache, "grow", "hf://someorg/tiny", "--to", "clone-2x", "-o", str(out), env={"HF_TOKEN": TOKEN}).returncode == 0
    dry = _run(cache, "push", str(out), "--repo", "me/grown", "--dry-run", env={"HF_TOKEN": TOKEN})
    assert dry.returncode == 0, dry.stderr
    listed = {line.split()[-1] for line in dry.stdout.splitlines() if line.startswith("  ") and line.split()[0].replace(",", "").isdigit()}
    assert listed == {p.name for p in out.iterdir() if not p.name.startswith(".")} and "model.safetensors" in listed
    assert "mixture-of-experts" in dry.stdout and "base_model: someorg/tiny" in dry.stdout
    for text in (dry.stdout, dry.stderr, *(p.read_bytes().decode("utf-8", "replace") for p in _files_under(out))):
        assert TOKEN not in text

    # a real push with the network off is one line, exit 2; a bad repo id is refused before anything is grown
    real = _run(cache, "push", str(out), "--repo", "me/grown", env={"HF_TOKEN": TOKEN})
    assert real.returncode == 2 and len(real.stderr.strip().splitlines()) == 1 and TOKEN not in real.stderr, real.stderr
    bad = _run(cache, "grow", "hf://someorg/tiny", "--to", "clone-2x", "-o", str(tmp_path / "never"), "--push-to-hub", "no-slash")
    assert bad.returncode == 2 and "org/name" in bad.stderr and not (tmp_path / "never").exists()


def test_a_pickle_only_repo_is_refused_unless_allowed(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    model.mkdir()
    shutil.copy(tiny("llama") / "config.json", model / "config.json")
    torch.save(load_file(tiny("llama") / "model.safetensors"), model / "pytorch_model.bin")
    cache = tmp_path / "hub"
    hub_cache_entry(model, cache, "someorg/pickled")
    refused = _run(cache, "plan", "hf://someorg/pickled", "--to", "2x")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    allowed = _run(cache, "plan", "hf://someorg/pickled", "--to", "2x", "--json", "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["config"]["hidden_size"] == 64


def test_growth_json_records_no_local_path(tiny, tmp_path):
    """growth.json is published with the model: the source is named and hashed, its directory never written."""
    out = tmp_path / "grown"
    hyperclone.grow(str(tiny("llama")), "2x", out=str(out))
    text = (out / "growth.json").read_text()
    assert str(tiny("llama").parent) not in text and str(tmp_path) not in text
    source = json.loads(text)["source"]
    assert source["name"] == tiny("llama").name and all(len(f["sha256"]) == 64 for f in source["files"])
