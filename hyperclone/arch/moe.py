"""What a mixture-of-experts layout is made of: names on disk, routing rules, config fields.

The layouts themselves are fields of the MoE families' entries in `families.py`. Routing decides
the exact maths (DESIGN.md section 3): with softmax scores each duplicated router row gets 1/t of
the probability; with sigmoid scores each keeps the full score unless top-k weights are
renormalised. The planner (`hyperclone.moe`) derives every scale from `scoring` and `norm_field`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

SHARED_PARTS = ("gate_proj", "up_proj", "down_proj")  # a shared expert's modules, in every family


@dataclass(frozen=True)
class MoeLayout:
    expert: str  # per-expert module on disk, with {e} and {part}
    parts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # fused 3D layout on disk: gate_up [E, 2I, d] (gate rows first), down [E, d, I]
    fused_gate_up: str = "mlp.experts.gate_up_proj"
    fused_down: str = "mlp.experts.down_proj"
    write_fused: bool = False  # transformers loads only the fused tensors (granitemoe), so they are written fused
    memory_experts: str = "mlp.experts"  # where transformers 5 keeps a layer's fused experts in memory
    # the router module in memory, relative to a layer: it returns (logits, top-k weights, top-k experts)
    memory_router: str = "mlp.gate"
    # gpt_oss: experts stored [in, out] (gate_up [E, d, 2I] with gate and up interleaved in the columns,
    # down [E, I, d]) and with biases (gate_up [E, 2I], down [E, d])
    transposed: bool = False
    expert_biases: tuple[str, str] | None = None
    router: str = "mlp.gate.weight"
    router_bias: str | None = None  # sigmoid routers' e_score_correction_bias (a buffer), or a router's own bias
    router_bias_param: bool = False  # the router bias is a parameter (counted), not a buffer
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

    # As an upcycling target: what it cannot express, and the config it needs.
    attention_bias: bool = True  # accepts q/k/v/o biases
    sliding_window: bool = True
    any_activation: bool = False  # experts follow hidden_act (else SiLU only)
    upcycle_config: tuple[tuple[str, object], ...] = ()  # fields set in an upcycled model's config
    qk_norm_field: str | None = None  # config flag turned on when the source has per-head q/k norms
    upcycle_refusal: str | None = None  # why no dense family becomes this one

    experts_aliases: tuple[str, ...] = ()  # other names of experts_field seen in config.json files
    renames: tuple[tuple[str, str], ...] = ()  # (in memory, on disk) module prefixes where transformers renames on load

    @cached_property
    def claims(self) -> re.Pattern:
        """One pattern for the experts, routers and shared experts of a layer (names relative to it):
        the tensors the MoE planner emits, so the dense planner and the goal counter skip them."""
        expert = re.escape(self.expert).replace(r"\{e\}", r"\d+").replace(r"\{part\}", "(" + "|".join(self.parts) + ")")
        extra = (self.router, self.router_bias, self.shared_gate, *(self.expert_biases or ()))
        patterns = [expert + r"\.weight"] + [re.escape(n) for n in extra if n]
        if self.shared:
            patterns.append(re.escape(self.shared) + "(" + "|".join(SHARED_PARTS) + r")\.weight")
        return re.compile("|".join(f"(?:{p})" for p in patterns))

    def expert_params(self, hidden: int, inner: int) -> int:
        """Parameters of one routed expert: three matrices, and biases where the family has them."""
        return 3 * hidden * inner + ((2 * inner + hidden) if self.expert_biases else 0)

    def experts_keys(self) -> tuple[str, ...]:
        return (self.experts_field, *self.experts_aliases)

    def expert_name(self, layer_prefix: str, layer: int, e: int, part: int, suffix: str = "weight") -> str:
        return f"{layer_prefix}{layer}.{self.expert.format(e=e, part=self.parts[part])}.{suffix}"
