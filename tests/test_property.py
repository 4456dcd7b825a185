"""Property test: random small configs of several families, random growth, still the same function."""
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperclone
from hyperclone.testing import save_tiny_model


@st.composite
def configs(draw):
    family = draw(st.sampled_from(["llama", "qwen2", "qwen3", "olmo2", "phi3", "gpt_neox", "gemma2"]))
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([4, 8, 12]))
    hidden = heads * draw(st.sampled_from([4, 8, 16]))  # transformers requires hidden % heads == 0
    extra = dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=draw(st.sampled_from([8, 20, 40])),
                 num_hidden_layers=draw(st.integers(1, 3)), vocab_size=draw(st.sampled_from([64, 101])))
    if family == "gpt_neox":
        extra["hidden_size"] = heads * head_dim
    elif family in ("phi3", "olmo2", "qwen2"):
        extra.update(num_key_value_heads=kv, hidden_size=heads * head_dim)
    else:
        extra.update(num_key_value_heads=kv, head_dim=head_dim)
    if family in ("qwen3", "llama"):
        extra["tie_word_embeddings"] = draw(st.booleans())
    width = draw(st.integers(1, 3))
    if family == "gemma2":
        width = draw(st.sampled_from([1, 4]))
    target = dict(width=width, ffn=draw(st.integers(1, 3)), noise=draw(st.sampled_from([0.0, 0.02])), seed=draw(st.integers(0, 99)))
    target["layers"] = extra["num_hidden_layers"] + draw(st.integers(0, 2))
    if width == target["ffn"] == 1 and target["layers"] == extra["num_hidden_layers"]:
        target["layers"] += 1  # a target that grows nothing is refused; grow at least by one layer
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return family, extra, target, dtype, draw(st.integers(0, 1000))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_configs_preserve_logits(case):
    family, extra, target, dtype, seed = case
    with tempfile.TemporaryDirectory() as tmp:
        src = save_tiny_model(family, Path(tmp) / "src", dtype=dtype, seed=seed, **extra)
        out = hyperclone.grow(src, target, Path(tmp) / "out", progress=False)
        result = hyperclone.verify(src, out, seq_len=20)
        assert result["max_abs_diff"] <= 1e-4 and result["argmax_agreement"] == 1.0, (case, result)
