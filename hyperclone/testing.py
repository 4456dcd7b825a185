"""Tiny real checkpoints of every supported family, for the demo, the tests and the benchmarks.

Weights are drawn larger than transformers' init (and norms away from 1) so that logits are far
from uniform: a growth bug then shows up as a real difference, not as noise around zero.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from hyperclone.arch import FAMILIES

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILY_EXTRAS: dict[str, dict] = {
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=1, sliding_window=None),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "gemma2": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8),
    "olmo2": dict(num_key_value_heads=2),
    "phi3": dict(num_key_value_heads=2),
    "gpt_neox": dict(rotary_pct=0.5, use_parallel_residual=True),
    "gemma": dict(num_key_value_heads=1, head_dim=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"]),
    "olmo": dict(num_key_value_heads=2, clip_qkv=3.0),
    "olmo3": dict(num_key_value_heads=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    "smollm3": dict(num_key_value_heads=2, no_rope_layers=[1, 0]),
    "granite": dict(num_key_value_heads=2, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
                    logits_scaling=2.0),
    "stablelm": dict(num_key_value_heads=2, use_qkv_bias=True, partial_rotary_factor=0.5),
    "phi": dict(num_key_value_heads=2, partial_rotary_factor=0.5, qk_layernorm=True),
    "starcoder2": dict(num_key_value_heads=2, sliding_window=8),
    "opt": dict(ffn_dim=48, word_embed_proj_dim=32),
    # MoE families: 4 experts top-2, a dense first layer where the family has one
    "qwen3_moe": dict(num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=[0]),
    "qwen2_moe": dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=24, norm_topk_prob=True),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2),
    "glm4_moe": dict(num_key_value_heads=2, head_dim=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.5,
                     use_qk_norm=True, norm_topk_prob=False),
    "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=2, routed_scaling_factor=2.5,
                        q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, head_dim=4),
    "hunyuan_v1_moe": dict(num_key_value_heads=2, head_dim=8, num_experts=4, moe_topk=2, intermediate_size=16),
    "dots1": dict(num_key_value_heads=2, head_dim=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                  n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.5),
    "gpt_oss": dict(num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16,
                    sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    "granitemoe": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16,
                       embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0),
}


def tiny_config(family: str, **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **{**BASE, **FAMILY_EXTRAS.get(family, {}), **overrides})


def randomize_(model: torch.nn.Module, seed: int, offset: float = 0.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 - offset + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * (1.0 / p.shape[-1]) ** 0.5)


def save_tiny_model(family: str, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> Path:
    """Build a random tiny `family` model and save it with save_pretrained; return its directory."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(config)
    randomize_(model, seed, offset=FAMILIES[family].norm_offset)
    model = model.to(dtype)
    path = Path(path)
    model.save_pretrained(path)
    return path


def hub_cache_entry(model_dir: str | os.PathLike, cache: str | os.PathLike, repo_id: str, revision: str = "main") -> Path:
    """Lay `model_dir` out in `cache` exactly as huggingface_hub lays out a download
    (models--org--name/{blobs,refs,snapshots}: content-addressed blobs, refs/<revision> holding the
    commit, the snapshot's files as relative symlinks to the blobs), so hf:// sources resolve offline."""
    import hashlib

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(f for f in Path(model_dir).iterdir() if f.is_file())
    commit = hashlib.sha1(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in files:
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def run_measuring_rss(cmd: list[str], **popen):
    """Run cmd to the end; return (the finished process, its peak resident set size sampled every 20 ms)."""
    import psutil

    proc = psutil.Popen(cmd, **popen)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    return proc, peak
