"""Per-family tables of mixture-of-experts layouts: names on disk, routing rules, config fields.

Routing decides the exact maths (DESIGN.md section 3): with softmax scores each duplicated router
row gets 1/t of the probability; with sigmoid scores each keeps the full score unless top-k
weights are renormalised. `router_weight_share` below is that factor, and the planner derives
every scale from it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoeLayout:
    expert: str  # per-expert module on disk, with {e} and {part}
    parts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    fused: str = "mlp.experts."  # fused 3D layout: {fused}gate_up_proj [E, 2I, d], {fused}down_proj [E, d, I]
    router: str = "mlp.gate.weight"
    router_bias: str | None = None  # sigmoid routers' e_score_correction_bias
    shared: str | None = None  # shared expert module prefix
    shared_gate: str | None = None  # qwen2_moe's sigmoid gate on the shared expert
    scoring: str = "softmax"  # or "sigmoid"
    norm_field: str | None = "norm_topk_prob"  # None: top-k weights always renormalised
    experts_field: str = "num_experts"
    topk_field: str = "num_experts_per_tok"
    inter_field: str = "moe_intermediate_size"
    shared_field: str | None = None  # config field sizing the shared expert
    shared_kind: str = "size"  # "size": shared_field is its inner size; "multiple": of the expert size; "same": as experts
    shared_required: bool = False  # the family always builds a shared expert
    dense_rule: str | None = None  # "first_k" (first_k_dense_replace) or "qwen" (mlp_only_layers); None: all MoE
    router_fp32: bool = False  # the router is kept in float32 whatever the model dtype
    groups: bool = False  # n_group / topk_group routing

    experts_aliases: tuple[str, ...] = ()  # other names of experts_field seen in config.json files
    renames: tuple[tuple[str, str], ...] = ()  # (in memory, on disk) module prefixes where transformers renames on load

    def experts_keys(self) -> tuple[str, ...]:
        return (self.experts_field, *self.experts_aliases)

    def expert_name(self, layer_prefix: str, layer: int, e: int, part: int, suffix: str = "weight") -> str:
        return f"{layer_prefix}{layer}.{self.expert.format(e=e, part=self.parts[part])}.{suffix}"


MOE_LAYOUTS: dict[str, MoeLayout] = {
    # transformers 5 saves qwen3_moe's expert count as num_local_experts; released configs say num_experts
    "qwen3_moe": MoeLayout("mlp.experts.{e}.{part}", dense_rule="qwen", experts_aliases=("num_local_experts",)),
    "qwen2_moe": MoeLayout(
        "mlp.experts.{e}.{part}", shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate.weight",
        shared_field="shared_expert_intermediate_size", dense_rule="qwen", shared_required=True,
    ),
    "mixtral": MoeLayout(
        "block_sparse_moe.experts.{e}.{part}", parts=("w1", "w3", "w2"), router="block_sparse_moe.gate.weight",
        norm_field=None, experts_field="num_local_experts", inter_field="intermediate_size",
        renames=(("mlp.", "block_sparse_moe."),),
    ),
    "olmoe": MoeLayout("mlp.experts.{e}.{part}", inter_field="intermediate_size"),
    "glm4_moe": MoeLayout(
        "mlp.experts.{e}.{part}", router_bias="mlp.gate.e_score_correction_bias", shared="mlp.shared_experts.",
        scoring="sigmoid", experts_field="n_routed_experts", shared_field="n_shared_experts", shared_kind="multiple",
        dense_rule="first_k", groups=True,
    ),
    "deepseek_v3": MoeLayout(
        "mlp.experts.{e}.{part}", router_bias="mlp.gate.e_score_correction_bias", shared="mlp.shared_experts.",
        scoring="sigmoid", experts_field="n_routed_experts", shared_field="n_shared_experts", shared_kind="multiple",
        dense_rule="first_k", groups=True,
    ),
    "hunyuan_v1_moe": MoeLayout(
        "mlp.experts.{e}.{part}", router="mlp.gate.wg.weight", shared="mlp.shared_mlp.", norm_field=None,
        topk_field="moe_topk", inter_field="intermediate_size", shared_kind="same", shared_required=True, router_fp32=True,
    ),
}


# Dense family -> MoE families whose attention, norms and embeddings compute exactly the same maths.
UPCYCLE_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("mixtral", "glm4_moe"),
    "mistral": ("mixtral", "glm4_moe"),
    "qwen2": ("qwen2_moe",),
    "qwen3": ("qwen3_moe", "glm4_moe"),
}
UPCYCLE_REFUSALS: dict[str, str] = {
    "olmo2": "olmo2 normalises after each sublayer while olmoe normalises before, so no MoE family computes its attention block",
    "gemma2": "gemma2's (1 + w) norms, soft-capping and sandwich norms have no MoE family here",
    "phi3": "no MoE family here shares phi3's fused attention",
    "gpt_neox": "gpt_neox's GELU MLP and parallel residual have no MoE family here",
}
