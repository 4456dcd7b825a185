"""The layer-streamed verifier gives the in-memory verifier's figures, for dense and MoE families."""
import json

import pytest
import torch

import hyperclone
from hyperclone.arch import FAMILIES, MOE_LAYOUTS
from hyperclone.verdict import TOLERANCE
from tests.conftest import assert_preserved
from tests.test_cli import run

# every family of the table (the streamed verifier rebuilds each one's modules outside the layers itself:
# olmo3's and gemma3's per-layer-type rotary tables once failed here), MoE upcycled by cloning, and depth
CASES = ([(family, "2x") for family in FAMILIES] + [(family, "clone-2x") for family in MOE_LAYOUTS]
         + [("gemma2", "deep-2x"), ("phi", "deep-2x"), ("qwen3", "3x"), ("llama", "moe-64x8-shared")])


@pytest.mark.parametrize("family,target", CASES)
def test_streamed_verify_agrees_with_in_memory_verify(family, target, tiny, tmp_path):
    src = tiny(family)
    grown = hyperclone.grow(src, target, tmp_path / "grown", progress=False)
    whole = hyperclone.verify(src, grown, stream=False)
    streamed = hyperclone.verify(src, grown, stream=True)
    picked = hyperclone.verify(src, grown, stream=True, experts="picked")
    assert_preserved(streamed)
    assert streamed["streamed"] and not whole["streamed"]
    for result in (streamed, picked):
        assert abs(result["max_abs_diff"] - whole["max_abs_diff"]) <= 0.05 * TOLERANCE  # the same figure, up to rounding
        assert result["argmax_agreement"] == whole["argmax_agreement"]
        assert result["grown_params"] == whole["grown_params"] and result["source_params"] == whole["source_params"]
        assert len(result["residual_max_abs_diff"]) == 2 and max(result["residual_max_abs_diff"]) <= 1e-4
    assert bool(picked["picked_expert_layers"]) == (family in MOE_LAYOUTS or target.startswith("moe"))


@pytest.mark.parametrize("family,target", [("llama", "3x"), ("qwen3_moe", "clone-2x")])
def test_streamed_verify_computes_in_float32_for_bf16_checkpoints(family, target, tiny, tmp_path):
    src = tiny(family, dtype=torch.bfloat16)
    grown = hyperclone.grow(src, target, tmp_path / "grown", progress=False)
    whole, streamed = hyperclone.verify(src, grown, stream=False), hyperclone.verify(src, grown, stream=True, experts="picked")
    assert_preserved(streamed)
    assert abs(streamed["max_abs_diff"] - whole["max_abs_diff"]) <= 0.05 * TOLERANCE


def test_streamed_verify_fails_like_the_in_memory_one(tiny, tmp_path):
    src, other = tiny("qwen3_moe"), tiny("qwen3_moe", seed=1)
    grown = hyperclone.grow(other, "clone-2x", tmp_path / "g", progress=False)
    whole = hyperclone.verify(src, grown, stream=False)
    streamed = hyperclone.verify(src, grown, stream=True, experts="picked")
    assert not whole["passed"] and not streamed["passed"]
    # the same transformers code on the same tokens: equal up to rounding, relative to the (large) difference itself
    assert abs(streamed["max_abs_diff"] - whole["max_abs_diff"]) <= 1e-5 * max(1.0, whole["max_abs_diff"])
    assert max(streamed["residual_max_abs_diff"]) > 1e-2  # the residual comparison sees the difference too


def test_cli_verify_stream(tiny, tmp_path):
    src = tiny("llama")
    grown = tmp_path / "g"
    assert run("grow", str(src), "--to", "deep-2x", "-o", str(grown)).returncode == 0
    result = run("verify", str(src), str(grown), "--stream", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["streamed"] and figures["passed"] and len(figures["residual_max_abs_diff"]) == 2
    text = run("verify", str(src), str(grown), "--stream")
    assert text.returncode == 0 and "layer-streamed" in text.stdout
