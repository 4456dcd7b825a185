"""Every family x every growth path: the grown checkpoint, loaded strictly by transformers'
AutoModelForCausalLM, gives the source's float32 logits (max |diff| <= 1e-4, same argmax)."""
import json

import pytest
import torch

import hyperclone
from hyperclone.arch import family_for
from tests.conftest import FAMILIES, assert_preserved

VARIANTS = {
    "width2": dict(width=2),
    "width3": dict(width=3),
    "ffn_only": dict(ffn=3),
    "depth_only": dict(layers=5),
    "width_ffn_depth": dict(width=2, ffn=2, layers=4),
    "noise_off": dict(width=2, noise=0),
    "noise_large": dict(width=3, noise=6.0),  # far above the cap: every share aimed at the edge of what is allowed
}


@pytest.mark.filterwarnings("ignore:noise 6 changes little")
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_float32_growth_preserves_logits(family, variant, tiny, tmp_path):
    src = tiny(family)
    target = VARIANTS[variant]
    out = hyperclone.grow(src, target, tmp_path / "grown", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    assert config["hidden_size"] == 32 * target.get("width", 1)
    assert config["num_hidden_layers"] == target.get("layers", 2)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))


# the gemmas scale embeddings by sqrt(hidden): only square widths are exact in half precision
HALF_VARIANTS = {"width2": dict(width=2), "width3": dict(width=3), "width_ffn_depth": dict(width=2, ffn=2, layers=3)}
GEMMA_HALF = {"width4": dict(width=4), "ffn_depth": dict(ffn=2, layers=3)}
SCALED = [f for f in FAMILIES if family_for(f).embed_scale_sqrt_hidden]


@pytest.mark.parametrize(
    "family,variant",
    [(f, v) for f in FAMILIES if f not in SCALED for v in HALF_VARIANTS] + [(f, v) for f in SCALED for v in GEMMA_HALF],
)
def test_bfloat16_growth_is_exact(family, variant, tiny, tmp_path):
    src = tiny(family, dtype=torch.bfloat16)
    target = {**HALF_VARIANTS, **GEMMA_HALF}[variant]
    out = hyperclone.grow(src, target, tmp_path / "grown", progress=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert_preserved(hyperclone.verify(src, out))


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_float16_growth_is_exact(family, tiny, tmp_path):
    src = tiny(family, dtype=torch.float16)
    out = hyperclone.grow(src, dict(width=4 if family == "gemma2" else 3), tmp_path / "grown", progress=False)
    assert_preserved(hyperclone.verify(src, out))


def test_gemma2_non_square_width_in_bf16_warns_and_reports(tiny, tmp_path):
    src = tiny("gemma2", dtype=torch.bfloat16)
    growth = hyperclone.plan(src, dict(width=2))
    assert any("sqrt" in w for w in growth.warnings)
    assert not hyperclone.plan(src, dict(width=4)).warnings
    with pytest.warns(UserWarning, match="sqrt"):
        out = hyperclone.grow(src, dict(width=2), tmp_path / "grown", progress=False)
    result = hyperclone.verify(src, out)
    assert 0 < result["max_abs_diff"] < 0.1  # reported honestly, small, but not within the exact bar
    # exact again when the output is float32
    out32 = hyperclone.grow(src, dict(width=2, dtype="float32"), tmp_path / "grown32", progress=False)
    assert_preserved(hyperclone.verify(src, out32))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_fresh_depth_layers_and_explicit_positions(family, tiny, tmp_path):
    src = tiny(family)
    out = hyperclone.grow(src, dict(layers=5, depth_init="fresh", insert_after=[0, 0, 1]), tmp_path / "g", progress=False)
    manifest = json.loads((out / "growth.json").read_text())
    assert manifest["layer_map"] == [0, 0, 0, 1, 1]
    assert_preserved(hyperclone.verify(src, out))


def test_depth_spreads_new_layers_evenly(tiny):
    growth = hyperclone.plan(tiny("llama", num_hidden_layers=4), "deep-2x")
    assert growth.layer_map == [0, 0, 1, 1, 2, 2, 3, 3]
    assert growth.inserted == [False, True] * 4


def test_layer_types_follow_copied_layers(tiny, tmp_path):
    src = tiny("gemma2", num_hidden_layers=4)
    out = hyperclone.grow(src, dict(layers=6, insert_after=[1, 2]), tmp_path / "g", progress=False)
    source_types = json.loads((src / "config.json").read_text())["layer_types"]
    grown_types = json.loads((out / "config.json").read_text())["layer_types"]
    assert grown_types == [source_types[i] for i in [0, 1, 1, 2, 2, 3]]
    assert_preserved(hyperclone.verify(src, out))


def test_untied_gemma2_and_tied_llama(tiny, tmp_path):
    for family, tied in (("gemma2", False), ("llama", True)):
        src = tiny(family, tie_word_embeddings=tied)
        out = hyperclone.grow(src, dict(width=3), tmp_path / family, progress=False)
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is tied
        assert_preserved(hyperclone.verify(src, out))


def test_gqa_group_sizes_and_biases(tiny, tmp_path):
    cases = [
        ("llama", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True)),
        ("llama", dict(num_key_value_heads=4)),
        ("qwen3", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=8)),
    ]
    for k, (family, overrides) in enumerate(cases):
        src = tiny(family, **overrides)
        out = hyperclone.grow(src, dict(width=2, ffn=2), tmp_path / str(k), progress=False)
        assert_preserved(hyperclone.verify(src, out))
