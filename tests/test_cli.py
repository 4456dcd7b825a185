"""The `hyperclone` console script, run as a real subprocess, and its handling of bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import hyperclone

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def run(*args, cwd=None):
    exe = shutil.which("hyperclone") or sys.executable
    cmd = [exe, *args] if exe.endswith("hyperclone") else [exe, "-m", "hyperclone_cli.app", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_grow_plan_verify_inspect_presets(tiny, tmp_path):
    src = tiny("gemma2")
    out = tmp_path / "grown"
    plan = run("plan", str(src), "--to", "2x", "--json")
    assert plan.returncode == 0, plan.stderr
    summary = json.loads(plan.stdout)
    assert summary["config"]["hidden_size"] == 64 and summary["total_params"] == summary["active_params"] > 0

    grow = run("grow", str(src), "--to", "2x", "-o", str(out), "--layers", "3")
    assert grow.returncode == 0, grow.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3

    verify = run("verify", str(src), str(out), "--json")
    assert verify.returncode == 0, verify.stderr
    figures = json.loads(verify.stdout)
    assert figures["passed"] and figures["max_abs_diff"] <= 1e-4 and figures["argmax_agreement"] == 1.0

    inspect = run("inspect", str(out), "--json")
    info = json.loads(inspect.stdout)
    assert (info["family"], info["hidden"], info["heads"], info["layers"], info["tied"]) == ("gemma2", 64, 8, 3, True)
    assert info["parameters"] == figures["grown_params"] and info["size_on_disk"] > 0

    presets = run("presets")
    assert presets.returncode == 0 and all(p in presets.stdout for p in ("2x", "3x", "4x", "deep-2x"))
    assert "fsdp2.yaml" in presets.stdout and "ddp.yaml" in presets.stdout  # the Accelerate launch configs, by path
    assert set(hyperclone.launch_configs()) == {"ddp", "fsdp2"} and not set(hyperclone.presets()) & {"ddp", "fsdp2"}

    dry = run("grow", str(src), "--to", "deep-2x", "-o", str(tmp_path / "dry"), "--dry-run")
    assert dry.returncode == 0 and not (tmp_path / "dry").exists() and "depth 2->4" in dry.stdout


def test_verify_fails_with_exit_1_on_a_different_function(tiny, tmp_path):
    src, other = tiny("llama"), tiny("llama", seed=1)
    grown = tmp_path / "g"
    assert run("grow", str(other), "--to", "2x", "-o", str(grown)).returncode == 0
    result = run("verify", str(src), str(grown), "--json")
    assert result.returncode == 1
    assert not json.loads(result.stdout)["passed"]


def test_existing_output_needs_force_and_force_replaces_only_hyperclone_outputs(tiny, tmp_path):
    src, out = tiny("qwen2"), tmp_path / "g"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("grow", str(src), "--to", "2x", "-o", str(out))
    assert result.returncode == 2 and "--force" in result.stderr
    forced = run("grow", str(src), "--to", "2x", "-o", str(out), "--force")
    assert forced.returncode == 2 and "keep.txt" in forced.stderr  # --force never deletes what hyperclone did not write
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run("grow", str(src), "--to", "2x", "-o", str(out), "--force").returncode == 0  # an empty directory holds nothing to lose
    assert run("grow", str(src), "--to", "3x", "-o", str(out), "--force").returncode == 0  # a grown output is replaced
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 96
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_existing_output_is_refused_before_the_source_is_fetched(tmp_path):
    """The output is checked first: a Hub source would otherwise be downloaded (here: looked up in an
    offline cache that lacks it) only to be told that -o is taken."""
    out = tmp_path / "g"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("grow", "hf://nobody/not-in-the-cache", "--to", "2x", "-o", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr and "Traceback" not in result.stderr
    forced = run("grow", "hf://nobody/not-in-the-cache", "--to", "2x", "-o", str(out), "--force")
    assert forced.returncode == 2 and "keep.txt" in forced.stderr and (out / "keep.txt").read_text() == "mine"
    assert "cache" in run("grow", "hf://nobody/not-in-the-cache", "--to", "2x", "-o", str(tmp_path / "new")).stderr


def _bad_inputs(tiny, tmp_path):
    good = tiny("llama")
    cases = {}
    trunc = tmp_path / "trunc"
    shutil.copytree(good, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (["grow", str(trunc), "--to", "2x"], "truncated")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    cases["corrupt"] = (["grow", str(corrupt), "--to", "2x"], "not a valid safetensors")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(good / "model.safetensors", bare / "model.safetensors")
    cases["missing_config"] = (["grow", str(bare / "model.safetensors"), "--to", "2x"], "num_attention_heads")
    unknown = tmp_path / "unknown"
    shutil.copytree(good, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "bert"
    (unknown / "config.json").write_text(json.dumps(cfg))
    cases["unknown_family"] = (["grow", str(unknown), "--to", "2x"], "unsupported model family")
    yaml_target = tmp_path / "odd.yaml"
    yaml_target.write_text("width: 1.5\n")
    cases["non_integer_width"] = (["grow", str(good), "--to", str(yaml_target)], "nearest reachable: 1 or 2")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases["unwritable_output"] = (["grow", str(good), "--to", "2x", "-o", str(blocker / "out")], "not a writable directory")
    cases["unknown_preset"] = (["grow", str(good), "--to", "5x"], "unknown target")
    cases["missing_source"] = (["grow", str(tmp_path / "nope"), "--to", "2x"], "does not exist")
    moe = {
        "moe_top_k_above_experts": ("moe: {arch: mixtral, experts: 2, top_k: 4}", "exceeds"),
        "moe_split_not_dividing": ("moe: {arch: mixtral, experts: 10, top_k: 5, split: 5}", "does not divide"),
        "moe_unknown_arch": ("moe: {arch: switch_transformer, experts: 8, top_k: 2}", "unknown MoE arch"),
        "moe_incompatible_attention": ("moe: {arch: deepseek_v3, experts: 8, top_k: 2}", "latent attention"),
    }
    for key, (text, expected) in moe.items():
        target = tmp_path / f"{key}.yaml"
        target.write_text(text + "\n")
        cases[key] = (["grow", str(good), "--to", str(target)], expected)
    cases["bad_shard_size"] = (["grow", str(good), "--to", "2x", "--shard-size", "lots"], "not a size")
    cases["fewer_layers"] = (["grow", str(good), "--to", "2x", "--layers", "1"], "only adds layers")
    return cases


BAD = ["truncated", "corrupt", "missing_config", "unknown_family", "non_integer_width", "unwritable_output",
       "unknown_preset", "missing_source", "bad_shard_size", "fewer_layers", "moe_top_k_above_experts",
       "moe_split_not_dividing", "moe_unknown_arch", "moe_incompatible_attention"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_no_output(case, tiny, tmp_path):
    args, expected = _bad_inputs(tiny, tmp_path)[case]
    work = tmp_path / "cwd"
    work.mkdir()
    if "-o" not in args:
        args = [*args, "-o", str(work / "out")]
    before = set(os.listdir(tmp_path))
    result = run(*args, cwd=work)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.listdir(work)
    assert set(os.listdir(tmp_path)) == before
