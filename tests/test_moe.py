"""MoE growth: widening MoE models, cloning and splitting experts, upcycling dense models — each
checked with transformers' own classes (strict loading, float32 logits, same argmax)."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import hyperclone
from hyperclone.errors import UserError
from hyperclone.arch import MOE_LAYOUTS
from tests.conftest import MOE_FAMILIES, assert_preserved, one_adamw_step

PATHS = {
    "width2": dict(width=2),
    "clone2": dict(moe={"clone": 2}),
    "split2": dict(moe={"split": 2}),
    "depth": dict(layers=4),
    "width_clone_split_depth": dict(width=2, layers=3, moe={"clone": 2, "split": 2}),
    "clone3_noise0": dict(noise=0, moe={"clone": 3}),
}
# one intermediate_size sizes their experts and their shared expert
NO_SPLIT = {f for f, layout in MOE_LAYOUTS.items() if layout.shared_kind == "same"}


def _cases():
    for family in MOE_FAMILIES:
        for path in PATHS:
            if family in NO_SPLIT and "split" in path:
                continue
            yield family, path


def experts_picked(directory, seq_len=48):
    """How many distinct experts the source's routers pick on verify's tokens (many, not a lucky one)."""
    model = hyperclone.load_model(directory, dtype=torch.float32)
    picked = set()

    def hook(module, args, output):
        picked.update(output[-1].flatten().tolist())

    block = MOE_LAYOUTS[model.config.model_type].memory_experts.rpartition(".")[0]
    for layer in model.model.layers:
        moe = layer.get_submodule(block)
        gate = getattr(moe, "gate", None) or getattr(moe, "router", None)
        if gate is not None and not isinstance(gate, torch.nn.Linear):
            gate.register_forward_hook(hook)
    tokens = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=tokens)
    return len(picked)


@pytest.mark.parametrize("family,path", list(_cases()))
def test_moe_source_paths_preserve_logits(family, path, tiny, tmp_path):
    src = tiny(family)
    out = hyperclone.grow(src, PATHS[path], tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))
    if path == "clone2":
        info = hyperclone.inspect(out)
        assert (info["experts"], info["top_k"]) == (8, 4)
        assert experts_picked(src) == 4  # every source expert is exercised by the check


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_bf16_clone_and_width(family, tiny, tmp_path):
    src = tiny(family, dtype=torch.bfloat16)
    target = dict(width=2, moe={"clone": 2} if family in NO_SPLIT else {"clone": 2, "split": 2})
    out = hyperclone.grow(src, target, tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))


UPCYCLES = {
    "llama->mixtral": ("llama", dict(arch="mixtral", experts=4, top_k=2)),
    "mistral->mixtral": ("mistral", dict(arch="mixtral", experts=8, top_k=2)),
    "llama->glm4_moe": ("llama", dict(arch="glm4_moe", experts=4, top_k=2, shared_experts=1, dense_layers=1)),
    "qwen2->qwen2_moe": ("qwen2", dict(arch="qwen2_moe", experts=4, top_k=2, shared_experts=1)),
    "qwen3->qwen3_moe": ("qwen3", dict(arch="qwen3_moe", experts=4, top_k=2, dense_layers=1)),
    "qwen3->glm4_moe": ("qwen3", dict(arch="glm4_moe", experts=4, top_k=2, shared_experts=1)),
    "llama->glm4_moe split": ("llama", dict(arch="glm4_moe", experts=8, top_k=4, split=2, shared_experts=2)),
    "qwen3->qwen3_moe split": ("qwen3", dict(arch="qwen3_moe", experts=8, top_k=4, split=4)),
    "qwen3->dots1": ("qwen3", dict(arch="dots1", experts=4, top_k=2, shared_experts=1, dense_layers=1)),
    "granite->granitemoe split": ("granite", dict(arch="granitemoe", experts=8, top_k=4, split=2)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(UPCYCLES))
def test_upcycling_preserves_logits(case, dtype, tiny, tmp_path):
    family, moe = UPCYCLES[case]
    src = tiny(family, dtype=dtype)
    out = hyperclone.grow(src, dict(width=2, moe=moe), tmp_path / "g", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == moe["arch"]
    assert hyperclone.inspect(out)["experts"] == moe["experts"]
    assert_preserved(hyperclone.verify(src, out, seq_len=48))


@pytest.mark.parametrize("family,preset", [("llama", "moe-8x"), ("qwen3", "moe-8x"), ("qwen2", "moe-8x"),
                                           ("llama", "moe-64x8-shared"), ("qwen3", "moe-64x8-shared"), ("mixtral", "clone-2x")])
def test_moe_presets(family, preset, tiny, tmp_path):
    src = tiny(family)
    out = hyperclone.grow(src, preset, tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))
    growth = hyperclone.plan(src, preset)
    assert growth.active_params < growth.total_params


def test_grouped_routing_keeps_groups_or_is_refused(tiny, tmp_path):
    grouped = tiny("glm4_moe", n_group=2, topk_group=1)
    with pytest.raises(UserError, match="grouped routing"):
        hyperclone.plan(grouped, dict(moe={"clone": 2}))
    all_groups = tiny("glm4_moe", n_group=2, topk_group=2, norm_topk_prob=True)
    out = hyperclone.grow(all_groups, dict(moe={"clone": 2, "split": 2}), tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(all_groups, out, seq_len=48))


def test_fused_expert_layout_is_read(tiny, tmp_path):
    src = tiny("qwen3_moe")
    fused_dir = shutil.copytree(src, tmp_path / "fused")
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layer = "model.layers.1.mlp.experts"
    experts = range(4)
    gate_up = torch.stack([torch.cat([tensors.pop(f"{layer}.{e}.gate_proj.weight"), tensors.pop(f"{layer}.{e}.up_proj.weight")]) for e in experts])
    down = torch.stack([tensors.pop(f"{layer}.{e}.down_proj.weight") for e in experts])
    tensors[f"{layer}.gate_up_proj"], tensors[f"{layer}.down_proj"] = gate_up, down
    save_file(tensors, str(fused_dir / "model.safetensors"), metadata={"format": "pt"})
    out = hyperclone.grow(fused_dir, dict(width=2, moe={"clone": 2}), tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))  # against the per-expert original


def test_cloned_experts_break_symmetry_only_with_noise(tiny, tmp_path):
    src = tiny("mixtral")
    gaps = {}
    for noise in (0.0, 0.01):
        out = hyperclone.grow(src, dict(noise=noise, moe={"clone": 2}), tmp_path / f"g{noise}", progress=False)
        assert_preserved(hyperclone.verify(src, out, seq_len=48))  # step 0: the same function
        model = hyperclone.load_model(out, dtype=torch.float32)
        one_adamw_step(model)
        down = model.model.layers[0].mlp.experts.down_proj.detach()  # [E, d, I]: copies are experts 2e, 2e+1
        gaps[noise] = (down[0::2] - down[1::2]).abs().max().item()
    # Without noise the copies get the same gradient up to float rounding, which depends on the CPU
    # (transformers' grouped expert kernels order tokens per expert); so the exact copies' gap is
    # judged against what noise gives them, not against an absolute figure.
    assert gaps[0.01] > 1e-4, gaps
    assert gaps[0.0] < 0.01 * gaps[0.01], gaps


def test_upcycled_experts_diverge_through_the_random_router(tiny, tmp_path):
    src = tiny("llama")
    moe = {"arch": "mixtral", "experts": 4, "top_k": 2, "router_init": 0.5}
    out = hyperclone.grow(src, dict(moe=moe), tmp_path / "g", progress=False)
    other_seed = hyperclone.grow(src, dict(seed=1, moe=moe), tmp_path / "s", progress=False)
    routers = [hyperclone.load_model(p).model.layers[0].mlp.gate.weight for p in (out, other_seed)]
    assert 0.4 < routers[0].std().item() < 0.6 and not torch.equal(*routers)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))
    model = hyperclone.load_model(out, dtype=torch.float32)
    experts = model.model.layers[0].mlp.experts
    assert torch.equal(experts.gate_up_proj[0], experts.gate_up_proj[1])  # exact copies at step 0
    one_adamw_step(model)
    assert not torch.equal(experts.gate_up_proj[0], experts.gate_up_proj[1])


@pytest.mark.parametrize(
    "family,target,expected",
    [
        ("llama", dict(moe={"arch": "mixtral", "experts": 2, "top_k": 4}), "exceeds"),
        ("qwen3_moe", dict(moe={"split": 3}), "does not divide"),
        ("llama", dict(moe={"arch": "switch", "experts": 4, "top_k": 2}), "unknown MoE arch"),
        ("llama", dict(moe={"arch": "qwen3_moe", "experts": 4, "top_k": 2}), "mixtral, glm4_moe"),
        ("olmo2", dict(moe={"arch": "olmoe", "experts": 4, "top_k": 2}), "normalises after"),
        ("hunyuan_v1_moe", dict(moe={"split": 2}), "clone them instead"),
        ("mixtral", dict(moe={"arch": "qwen3_moe"}), "stays mixtral"),
        ("llama", dict(moe={"arch": "deepseek_v3", "experts": 4, "top_k": 2}), "latent attention"),
        ("qwen3", dict(moe={"arch": "gpt_oss", "experts": 4, "top_k": 2}), "attention sinks"),
        ("stablelm", dict(width=2), "one LayerNorm module per head|per-head module lists"),
        ("opt", dict(width=2), "word_embed_proj_dim"),
        ("gemma3_text", dict(moe={"arch": "mixtral", "experts": 4, "top_k": 2}), "sandwich norms"),
        ("deepseek_v3", dict(moe={"clone": 2}), None),
    ],
)
def test_moe_refusals(family, target, expected, tiny):
    if expected is None:  # deepseek_v3 with topk_group == n_group: grouped routing that cloning keeps
        assert hyperclone.plan(tiny(family), target).moe["experts"] == 8
        with pytest.raises(UserError, match="grouped routing"):
            hyperclone.plan(tiny(family, topk_group=1), target)
        return
    overrides = {"stablelm": dict(qk_layernorm=True), "opt": dict(word_embed_proj_dim=16)}.get(family, {})
    with pytest.raises(UserError, match=expected):
        hyperclone.plan(tiny(family, **overrides), target)


def test_mla_without_q_lora(tiny, tmp_path):
    src = tiny("deepseek_v3", q_lora_rank=None)
    out = hyperclone.grow(src, dict(width=2, moe={"split": 2}), tmp_path / "g", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["kv_lora_rank"], config["hidden_size"]) == (8, 8, 64)
    assert_preserved(hyperclone.verify(src, out, seq_len=48))
