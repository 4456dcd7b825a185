"""Sources (single file, bare file, sharded dir, pickle) and outputs (shards, manifest, side files)."""
import hashlib
import json
import shutil

import pytest
import torch
from safetensors import safe_open

import hyperclone
from hyperclone.arch import FAMILIES
from hyperclone.errors import UserError
from hyperclone.io.reader import open_checkpoint
from tests.conftest import assert_preserved


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_single_file_with_config_beside_it(tiny, tmp_path):
    d = tmp_path / "single"
    d.mkdir()
    src = tiny("phi3")
    shutil.copy(src / "model.safetensors", d / "small.safetensors")
    shutil.copy(src / "config.json", d / "config.json")
    out = hyperclone.grow(d / "small.safetensors", "2x", tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(d / "small.safetensors", out))


def test_bare_file_infers_what_shapes_make_certain(tiny, tmp_path):
    bare = tmp_path / "bare.safetensors"
    shutil.copy(tiny("qwen3") / "model.safetensors", bare)  # qwen3's per-head norms give head counts
    growth = hyperclone.plan(bare, "2x")
    assert (growth.src.heads, growth.src.kv_heads, growth.src.head_dim, growth.src.tied) == (4, 2, 16, True)
    assert any("no config.json" in w for w in growth.warnings)
    with pytest.warns(UserWarning, match="no config.json"):
        out = hyperclone.grow(bare, "2x", tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(bare, out))

    llama = tmp_path / "llama.safetensors"
    shutil.copy(tiny("llama") / "model.safetensors", llama)
    with pytest.raises(UserError, match="num_attention_heads"):
        hyperclone.plan(llama, "2x")
    growth = hyperclone.plan(llama, "2x", overrides={"num_attention_heads": 4})
    assert growth.src.kv_heads == 2 and growth.dst.heads == 8


def test_sharded_source_and_sharded_output(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama"))
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    out = hyperclone.grow(sharded, "2x", tmp_path / "g", shard_size="60KB", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    for shard in shards:
        with safe_open(str(out / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    total = sum(torch.Size(s).numel() for s in [_shape(out, n, f) for n, f in index["weight_map"].items()])
    assert index["metadata"]["total_size"] == total * 4
    assert_preserved(hyperclone.verify(sharded, out))


def _shape(out, name, shard):
    with safe_open(str(out / shard), "pt") as f:
        return f.get_slice(name).get_shape()


def test_manifest_side_files_and_determinism(tiny, tmp_path):
    src = shutil.copytree(tiny("gpt_neox"), tmp_path / "src")
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    (src / "tokenizer_config.json").write_text("{}")
    out = hyperclone.grow(src, dict(width=2, seed=5, noise=0.02), tmp_path / "a", progress=False)
    again = hyperclone.grow(src, dict(width=2, seed=5, noise=0.02), tmp_path / "b", progress=False)
    other = hyperclone.grow(src, dict(width=2, seed=6, noise=0.02), tmp_path / "c", progress=False)
    manifest = json.loads((out / "growth.json").read_text())
    assert manifest["seed"] == 5 and manifest["noise"] == 0.02
    assert manifest["hyperclone_version"]
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(manifest["copied_files"])
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    files = {f["name"]: f["sha256"] for f in manifest["source"]["files"]}
    assert files["model.safetensors"] == _sha(src / "model.safetensors")
    assert files["config.json"] == _sha(src / "config.json")
    for shard in manifest["shards"]:
        assert shard["sha256"] == _sha(out / shard["file"])
    assert any("width x2" in op for op in manifest["operators"])
    assert _sha(out / "model.safetensors") == _sha(again / "model.safetensors")
    assert _sha(out / "model.safetensors") != _sha(other / "model.safetensors")


def test_dtype_override_and_dry_run(tiny, tmp_path):
    src = tiny("olmo2")
    growth = hyperclone.grow(src, dict(width=2, dtype="bfloat16"), tmp_path / "never", dry_run=True)
    assert growth.dtype == torch.bfloat16 and not (tmp_path / "never").exists()
    assert growth.nbytes == growth.total_params * 2
    out = hyperclone.grow(src, dict(width=2, dtype="bfloat16"), tmp_path / "g", progress=False)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    # the output equals the bf16-rounded source to float32 accuracy
    result = hyperclone.verify(src, out)
    assert result["argmax_agreement"] > 0.9 and result["max_abs_diff"] < 0.1


def test_plan_counts_match_transformers(tiny):
    from transformers import AutoConfig, AutoModelForCausalLM

    for family in ("gemma2", "phi3", "llama"):
        growth = hyperclone.plan(tiny(family), dict(width=3, ffn=2, layers=3))
        config = dict(growth.config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        assert sum(p.numel() for p in model.parameters()) == growth.total_params


def test_pickled_source_needs_the_flag(tiny, tmp_path):
    src = tiny("llama")
    d = tmp_path / "pickled"
    d.mkdir()
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        torch.save({k: f.get_tensor(k) for k in f.keys()}, d / "pytorch_model.bin")
    shutil.copy(src / "config.json", d / "config.json")
    with pytest.raises(UserError, match="--allow-pickle"):
        hyperclone.plan(d, "2x")
    out = hyperclone.grow(d, "2x", tmp_path / "g", allow_pickle=True, progress=False)
    assert_preserved(hyperclone.verify(src, out))


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the local Hub cache"):
        hyperclone.plan("hf://no-such-org/no-such-model", "2x")


@pytest.mark.parametrize("family", [name for name, f in FAMILIES.items() if f.detect is not None])
def test_bare_file_family_is_recognised_from_tensor_names(family, tiny, tmp_path):
    """Every family the table marks as recognisable is told apart from all the others by its names and shapes."""
    bare = tmp_path / "bare.safetensors"
    shutil.copy(tiny(family) / "model.safetensors", bare)
    ckpt = open_checkpoint(bare, overrides={"num_attention_heads": 4})
    assert ckpt.config["model_type"] == family
