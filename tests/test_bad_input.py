"""Every bad input the reliability review found, as a table: one line on stderr, exit code 2, no traceback,
nothing left behind — each run as a real `hyperclone` subprocess on real files."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tests.test_cli import run
from tests.test_train import DATA


def _header_file(directory, header):
    """A model directory whose safetensors header is `header` (any JSON value)."""
    directory.mkdir()
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return directory


def _copy(src, dst, edit_config=None):
    shutil.copytree(src, dst)
    if edit_config is not None:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture()
def cases(tiny, tmp_path):
    """case name -> (argv, text the one error line must contain)."""
    good, moe = tiny("llama"), tiny("qwen3_moe")
    trainable = tiny("llama", vocab_size=300)
    t = tmp_path
    bare = t / "bare"
    bare.mkdir()
    shutil.copy(good / "model.safetensors", bare / "model.safetensors")
    index_list = _copy(good, t / "index-list")
    (index_list / "model.safetensors.index.json").write_text("[1, 2]")
    index_out = _copy(good, t / "index-out")
    (index_out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "../x.safetensors"}}))
    config_list = _copy(good, t / "config-list")
    (config_list / "config.json").write_text("[1]")
    mismatched = _copy(good, t / "mismatched", lambda c: c.update(intermediate_size=64))
    yaml_list = t / "list.yaml"
    yaml_list.write_text("- width: 2\n")
    yaml_latin = t / "latin.yaml"
    yaml_latin.write_bytes("width: 2  # größer\n".encode("latin-1"))
    yaml_empty = t / "empty.yaml"
    yaml_empty.write_text("")
    (t / "a-dir").mkdir()
    truncated = _copy(trainable, t / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    binary = t / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    jsonl = t / "broken.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    train = ["--data", DATA, "--seq-len", "32", "--batch-size", "2", "--trackers", "none"]
    return {
        "header_list": (["inspect", str(_header_file(t / "h1", [1, 2, 3]))], "not an object"),
        "header_null": (["inspect", str(_header_file(t / "h2", None))], "not an object"),
        "header_string": (["inspect", str(_header_file(t / "h3", "abc"))], "not an object"),
        "metadata_not_object": (["inspect", str(_header_file(t / "h4", {"__metadata__": [1]}))], "__metadata__"),
        "index_not_object": (["inspect", str(index_list)], "not a valid shard index"),
        "index_outside_directory": (["inspect", str(index_out)], "outside"),
        "config_not_object": (["inspect", str(config_list)], "not an object"),
        "target_yaml_list": (["plan", str(good), "--to", str(yaml_list)], "must be a YAML mapping"),
        "target_yaml_not_utf8": (["plan", str(good), "--to", str(yaml_latin)], "not UTF-8"),
        "target_is_directory": (["plan", str(good), "--to", str(t / "a-dir")], "is a directory"),
        "target_grows_nothing": (["grow", str(good), "--to", str(yaml_empty)], "grows nothing"),
        "verify_seq_len_0": (["verify", str(good), str(good), "--seq-len", "0"], "--seq-len"),
        "verify_batch_0": (["verify", str(good), str(good), "--batch", "0"], "--batch"),
        "verify_negative_seq_len": (["verify", str(good), str(good), "--seq-len", "-5"], "--seq-len"),
        "verify_negative_tolerance": (["verify", str(good), str(good), "--tolerance", "-1"], "--tolerance"),
        "verify_nan_tolerance": (["verify", str(good), str(good), "--tolerance", "nan"], "--tolerance"),
        "verify_missing_grown": (["verify", str(good), str(t / "nope")], "grown model"),
        "set_heads_not_a_number": (["plan", str(bare / "model.safetensors"), "--to", "2x", "--set", "num_attention_heads=abc"],
                                   "num_attention_heads"),
        "set_heads_zero": (["plan", str(bare / "model.safetensors"), "--to", "2x", "--set", "num_attention_heads=0"],
                           "num_attention_heads"),
        "set_rewrites_config": (["grow", str(good), "--to", "2x", "--set", "rms_norm_eps=0.5"], "already says"),
        "config_disagrees_inspect": (["inspect", str(mismatched)], "mlp.gate_proj.weight has shape"),
        "config_disagrees_verify": (["verify", str(good), str(mismatched)], "mlp.gate_proj.weight has shape"),
        "config_disagrees_grow": (["grow", str(mismatched), "--to", "2x"], "mlp.gate_proj.weight has shape"),
        "shard_size_zero": (["grow", str(good), "--to", "2x", "--shard-size", "0"], "--shard-size"),
        "dense_preset_on_moe_source": (["grow", str(moe), "--to", "moe-8x"], "clone-2x"),
        "train_truncated_model": (["train", "--model", str(truncated), *train], "truncated"),
        "train_binary_data": (["train", "--model", str(trainable), *train, "--data", str(binary)], "not UTF-8 text"),
        "train_malformed_jsonl": (["train", "--model", str(trainable), *train, "--data", str(jsonl)], "line 2 is not JSON"),
        "train_decay_fraction_2": (["train", "--model", str(trainable), *train, "--decay-fraction", "2"], "--decay-fraction"),
        "train_max_steps_0": (["train", "--model", str(trainable), *train, "--max-steps", "0"], "--max-steps must be"),
        "train_into_its_model": (["train", "--model", str(trainable), *train, "-o", str(trainable)], "model being trained"),
        "train_save_stable_cosine": (["train", "--model", str(trainable), *train, "--save-stable", "--schedule", "cosine"],
                                     "needs --schedule wsd"),
        "train_save_stable_branch": (["train", "--model", str(trainable), *train, "--save-stable", "--decay-from", str(t)],
                                     "leave out --save-stable"),
    }


CASES = ["header_list", "header_null", "header_string", "metadata_not_object", "index_not_object", "index_outside_directory",
         "config_not_object", "target_yaml_list", "target_yaml_not_utf8", "target_is_directory", "target_grows_nothing",
         "verify_seq_len_0", "verify_batch_0", "verify_negative_seq_len", "verify_negative_tolerance", "verify_nan_tolerance",
         "verify_missing_grown", "set_heads_not_a_number", "set_heads_zero", "set_rewrites_config", "config_disagrees_inspect",
         "config_disagrees_verify", "config_disagrees_grow", "shard_size_zero", "dense_preset_on_moe_source",
         "train_truncated_model", "train_binary_data", "train_malformed_jsonl", "train_decay_fraction_2", "train_max_steps_0",
         "train_into_its_model", "train_save_stable_cosine", "train_save_stable_branch"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, cases, tmp_path):
    args, expected = cases[case]
    work = tmp_path / "cwd"
    work.mkdir()
    if args[0] in ("grow", "train") and "-o" not in args:
        args = [*args, "-o", str(work / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*args, cwd=work)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert os.listdir(work) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_float_spellings_in_yaml_are_numbers(tiny, tmp_path):
    src = tiny("llama")
    for spelling, value in (("1e-2", 0.01), (".5", 0.5), ("1e308", 1e308), ("2E-3", 0.002)):
        target = tmp_path / f"t{value}.yaml"
        target.write_text(f"width: 2\nnoise: {spelling}\n")
        result = run("plan", str(src), "--to", str(target), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["target"]["noise"] == value
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("kind: training\nlr: 3e-4\nweight_decay: 1e-2\n")
    from hyperclone.train.config import make_config

    config = make_config(recipe, model="m", data="d")
    assert (config.lr, config.weight_decay) == (3e-4, 1e-2)


def test_a_file_named_like_a_preset_does_not_hijack_it(tiny, tmp_path):
    src = tiny("llama")
    work = tmp_path / "work"
    work.mkdir()
    assert run("grow", str(src), "--to", "2x", "-o", "2x", cwd=work).returncode == 0  # now ./2x is a directory
    result = run("plan", str(src), "--to", "2x", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target_spec"]["hidden"] == 64
    assert "using the preset 2x" in result.stderr and "./2x" in result.stderr
    (work / "3x.yaml").write_text("width: 3\n")
    explicit = run("plan", str(src), "--to", "3x.yaml", "--json", cwd=work)  # a .yaml name is a path
    assert json.loads(explicit.stdout)["target_spec"]["hidden"] == 96


def test_human_units_for_small_outputs(tiny):
    result = run("plan", str(tiny("llama")), "--to", "2x")
    assert result.returncode == 0 and "0.00 GB" not in result.stdout
    assert re.search(r"needs \d+\.\d\d MB free", result.stdout), result.stdout


def test_a_warmup_longer_than_the_run_is_a_warning(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    result = run("train", "--model", str(model), "--data", DATA, "--seq-len", "32", "--batch-size", "2", "--trackers", "none",
                 "--max-steps", "3", "--warmup", "10", "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "warning: --warmup 10.0 is 10 steps, longer than the run's 3" in result.stderr


def test_a_legacy_pickle_loads_with_the_flag(tiny, tmp_path):
    src = tiny("llama")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(src / "config.json", legacy / "config.json")
    torch.save(load_file(src / "model.safetensors"), legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    refused = run("plan", str(legacy), "--to", "2x")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr
    grown = tmp_path / "g"
    assert run("grow", str(legacy), "--to", "2x", "--allow-pickle", "-o", str(grown)).returncode == 0
    assert run("verify", str(src), str(grown)).returncode == 0


UNFORESEEN = textwrap.dedent("""
    import sys, typer
    from hyperclone_cli.app import command
    app = typer.Typer()
    @app.command()
    @command()
    def fails() -> None:
        {}["a key nobody wrote"]
    app()
""")


@pytest.mark.parametrize("debug", [False, True])
def test_an_unforeseen_error_is_one_line_asking_for_a_report(debug):
    env = {**os.environ, "HYPERCLONE_DEBUG": "1" if debug else "0"}
    result = subprocess.run([sys.executable, "-c", UNFORESEEN], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    if debug:
        assert "Traceback" in result.stderr and "KeyError" in result.stderr
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "internal error (KeyError" in lines[0] and "report" in lines[0] and "--debug" in lines[0]
