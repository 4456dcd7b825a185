"""Per-family tables: which tensor plays which role in the growth maths.

A family is data, not code: the operators in `hyperclone.ops` and the planner in
`hyperclone.plan` turn roles into tensors, so a new architecture costs one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from enum import Enum

from hyperclone.arch.moe import MoeLayout
from hyperclone.errors import UserError


class Role(Enum):
    """How a tensor relates to the residual stream, which decides how it grows."""

    READ_ATTN = "read_attn"  # reads the residual, writes head space (q, k, v)
    READ_FFN = "read_ffn"  # reads the residual, writes the FFN's inner space (gate, up)
    WRITE_ATTN = "write_attn"  # reads head space, writes the residual (o_proj)
    WRITE_FFN = "write_ffn"  # reads the FFN's inner space, writes the residual (down)
    QKV_FUSED = "qkv_fused"  # rows [q; k; v], each a READ_ATTN (phi3)
    GATE_UP_FUSED = "gate_up_fused"  # rows [gate; up], each a READ_FFN (phi3)
    RES_NORM = "res_norm"  # norm over the residual (weight, bias)
    PROJ_NORM = "proj_norm"  # norm over all heads of a projection (olmo2 q_norm/k_norm)
    HEAD_NORM = "head_norm"  # norm over one head's dims (qwen3 q_norm/k_norm), or over a latent (MLA)
    LATENT_READ = "latent_read"  # reads the residual into a latent whose rank stays (MLA q_a_proj, kv_a_proj_with_mqa)
    HEAD_FROM_LATENT = "head_from_latent"  # reads a latent, writes head space (MLA q_b_proj, kv_b_proj)


WRITES = (Role.WRITE_ATTN, Role.WRITE_FFN)


def role_tiling(role: Role, n: int, m: int) -> tuple[int, int]:
    """(row tiles, column parts) of a 2D tensor with `role` under width n and FFN m (DESIGN.md 2).

    The planner builds segments from it and the goal solver counts parameters with it.
    """
    return {
        Role.READ_ATTN: (n, n), Role.QKV_FUSED: (n, n), Role.WRITE_ATTN: (n, n),
        Role.READ_FFN: (n * m, n), Role.GATE_UP_FUSED: (n * m, n), Role.WRITE_FFN: (n, n * m),
        Role.LATENT_READ: (1, n),  # the latent rank stays; only the residual it reads grows
        Role.HEAD_FROM_LATENT: (n, 1),  # more heads from the same latent
    }[role]
NORMS = (Role.RES_NORM, Role.PROJ_NORM, Role.HEAD_NORM)
FFN_ROLES = (Role.READ_FFN, Role.WRITE_FFN, Role.GATE_UP_FUSED)


@dataclass(frozen=True)
class Rule:
    module: str  # name relative to the layer prefix, without .weight/.bias
    role: Role


def _rules(**modules: Role) -> tuple[Rule, ...]:
    return tuple(Rule(name.replace("__", "."), role) for name, role in modules.items())


_LLAMA_ATTN = dict(
    self_attn__q_proj=Role.READ_ATTN,
    self_attn__k_proj=Role.READ_ATTN,
    self_attn__v_proj=Role.READ_ATTN,
    self_attn__o_proj=Role.WRITE_ATTN,
)
_SWIGLU = dict(mlp__gate_proj=Role.READ_FFN, mlp__up_proj=Role.READ_FFN, mlp__down_proj=Role.WRITE_FFN)
_PRE_NORMS = dict(input_layernorm=Role.RES_NORM, post_attention_layernorm=Role.RES_NORM)


@dataclass(frozen=True)
class Refusal:
    """A config value hyperclone cannot grow exactly, and why (checked before anything is planned)."""

    key: str
    ok: Callable[[object, dict], bool]  # (the value, the whole config) -> growable?
    reason: str


@dataclass(frozen=True)
class Family:
    """Everything hyperclone knows about one transformers model_type: the rest of the code reads these
    fields and never names a family."""

    model_type: str
    rules: tuple[Rule, ...]
    layer_prefix: str = "model.layers."
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # Other embeddings of the residual (OPT's learned positions): repeated along the hidden size.
    extra_embeds: tuple[str, ...] = ()
    # Norms computing x * (offset + w): gemma's (1 + w). Fresh norms start at 1 - offset.
    norm_offset: float = 0.0
    # The embedding output is multiplied by sqrt(hidden_size) (gemma).
    embed_scale_sqrt_hidden: bool = False
    # transformers' tie_word_embeddings when config.json does not say
    tied_default: bool = False
    kv_heads_field: str | None = "num_key_value_heads"
    # Tensor names (suffixes) that hold no weights and are dropped, e.g. cached rotary tables.
    ignore_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # Field in config.json giving the inner FFN size.
    ffn_field: str = "intermediate_size"
    # parameter names a layer's modules end in (gpt_oss's attention also holds `sinks`)
    param_names: tuple[str, ...] = ("weight", "bias")
    # other config.json fields that equal hidden_size and grow with it (OPT's word_embed_proj_dim)
    hidden_fields: tuple[str, ...] = ()
    # config.json lists with one entry per layer, remapped when layers are inserted
    layer_lists: tuple[str, ...] = ("layer_types",)
    # config flag that turns sliding_window on; None: a sliding_window value alone turns it on (mistral)
    sliding_flag: str | None = "use_sliding_window"
    # Inferring a bare .safetensors file: tensor names (relative to a layer) that must all be present;
    # None: never inferred from names (they match another family's; config.json must say).
    detect: tuple[str, ...] | None = None
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    # A fused query/key/value projection (relative to the layer) and how its rows are laid out: "stacked"
    # [q; k; v] (phi3) or "per_head" [heads, (q k v), head_dim] (gpt_neox). QK-Clip scales its q and k rows.
    fused_qkv: str | None = None
    fused_qkv_layout: str = "stacked"
    head_norm: str | None = None  # a per-head norm whose length is head_dim (qwen3's q_norm)
    refusals: tuple[Refusal, ...] = ()
    # Dense -> MoE: the MoE families whose attention, norms and embeddings compute the same maths.
    upcycle_to: tuple[str, ...] = ()
    no_upcycle: str = "no MoE family here shares its maths"
    moe: MoeLayout | None = None  # this family's experts, when it is a mixture of experts
    # Liger Kernel has fused kernels for it (RMSNorm, SwiGLU, RoPE, linear cross-entropy): training on a
    # GPU applies them; each such family is checked against plain transformers on the GPU
    liger: bool = False
    # (in memory, on disk) name prefixes where transformers renames on load (the lm_head of gpt_neox)
    renames: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def disk_names(self, name: str, layer_renames: tuple[tuple[str, str], ...] = ()) -> list[str]:
        """Where transformers' in-memory parameter `name` may be stored on disk: as is, or renamed
        (the family's whole-model renames, and `layer_renames` inside a decoder layer)."""
        names = [name] + [disk + name[len(memory):] for memory, disk in self.renames if name.startswith(memory)]
        if name.startswith(self.layer_prefix):
            index, _, rel = name[len(self.layer_prefix):].partition(".")
            names += [f"{self.layer_prefix}{index}.{disk}{rel[len(memory):]}" for memory, disk in layer_renames if rel.startswith(memory)]
        return names

    def rule_for(self, module: str) -> Rule | None:
        for rule in self.rules:
            if rule.module == module:
                return rule
        return None

    def modules(self, *roles: Role) -> list[str]:
        """The modules with one of `roles`, in table order (gate before up)."""
        return [r.module for r in self.rules if r.role in roles]

    @property
    def swiglu(self) -> tuple[str, str, str] | None:
        """(gate, up, down) modules of a gated FFN, the one shape a dense FFN is upcycled from."""
        reads, writes = self.modules(Role.READ_FFN), self.modules(Role.WRITE_FFN)
        return (reads[0], reads[1], writes[0]) if len(reads) == 2 and len(writes) == 1 else None

    def uses_sliding_window(self, config: dict) -> bool:
        return bool(config.get("sliding_window")) and (self.sliding_flag is None or bool(config.get(self.sliding_flag)))

    def check(self, config: dict, where: str) -> None:
        """Refuse, with the reason, a config this family cannot grow exactly."""
        for refusal in self.refusals:
            if refusal.key in config and not refusal.ok(config[refusal.key], config):
                raise UserError(f"{where}: {refusal.key}={config[refusal.key]!r} cannot be grown exactly: {refusal.reason}")


_QK_HEAD_NORMS = dict(self_attn__q_norm=Role.HEAD_NORM, self_attn__k_norm=Role.HEAD_NORM)
_QK_PROJ_NORMS = dict(self_attn__q_norm=Role.PROJ_NORM, self_attn__k_norm=Role.PROJ_NORM)
_SANDWICH = dict(pre_feedforward_layernorm=Role.RES_NORM, post_feedforward_layernorm=Role.RES_NORM)
_POST_NORMS = dict(post_attention_layernorm=Role.RES_NORM, post_feedforward_layernorm=Role.RES_NORM)
_LLAMA = _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS)
_GEMMA = dict(norm_offset=1.0, embed_scale_sqrt_hidden=True, tied_default=True)
_MIXTRAL_TARGETS = ("mixtral", "glm4_moe")

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("llama", _LLAMA, detect=(), upcycle_to=_MIXTRAL_TARGETS, liger=True),
        Family("mistral", _LLAMA, sliding_flag=None, upcycle_to=_MIXTRAL_TARGETS, liger=True),
        Family("qwen2", _LLAMA, detect=("self_attn.q_proj.bias",), upcycle_to=("qwen2_moe",), liger=True),
        Family("qwen3", _rules(**_LLAMA_ATTN, **_QK_HEAD_NORMS, **_SWIGLU, **_PRE_NORMS), detect=("self_attn.q_norm.weight",),
               head_norm="self_attn.q_norm", upcycle_to=("qwen3_moe", "glm4_moe", "dots1"), liger=True),
        Family("gemma", _LLAMA, **_GEMMA, no_upcycle="gemma's (1 + w) norms and scaled embeddings have no MoE family here", liger=True),
        Family("gemma2", _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS, **_SANDWICH), **_GEMMA,
               detect=("pre_feedforward_layernorm.weight",),
               no_upcycle="gemma2's (1 + w) norms, soft-capping and sandwich norms have no MoE family here", liger=True),
        Family("gemma3_text", _rules(**_LLAMA_ATTN, **_QK_HEAD_NORMS, **_SWIGLU, **_PRE_NORMS, **_SANDWICH), **_GEMMA,
               detect=("pre_feedforward_layernorm.weight", "self_attn.q_norm.weight"), head_norm="self_attn.q_norm",
               no_upcycle="gemma3's (1 + w) norms and sandwich norms have no MoE family here", liger=True),
        Family("olmo", _rules(**_LLAMA_ATTN, **_SWIGLU),  # its LayerNorms have no parameters
               no_upcycle="olmo's parameter-free LayerNorms have no MoE family here"),
        Family("olmo2", _rules(**_LLAMA_ATTN, **_QK_PROJ_NORMS, **_SWIGLU, **_POST_NORMS), detect=("self_attn.q_norm.weight",),
               no_upcycle="olmo2 normalises after each sublayer while olmoe normalises before, so no MoE family computes its attention block", liger=True),
        Family("olmo3", _rules(**_LLAMA_ATTN, **_QK_PROJ_NORMS, **_SWIGLU, **_POST_NORMS),
               no_upcycle="olmo3 normalises after each sublayer while olmoe normalises before, so no MoE family computes its attention block", liger=True),
        Family("smollm3", _LLAMA, tied_default=True, layer_lists=("layer_types", "no_rope_layers"),
               no_upcycle="smollm3's layers without rotary embeddings have no MoE family here", liger=True),
        Family("granite", _LLAMA, upcycle_to=("granitemoe",), liger=True),
        Family(
            "stablelm", _LLAMA, detect=("input_layernorm.bias", "mlp.gate_proj.weight"),
            refusals=(Refusal("qk_layernorm", lambda v, cfg: not v,
                              "its q/k LayerNorms are one module per head, and hyperclone does not grow per-head module lists"),),
            no_upcycle="stablelm's LayerNorms with biases and partial rotary have no MoE family here",
        ),
        Family(
            "phi3",
            _rules(self_attn__qkv_proj=Role.QKV_FUSED, self_attn__o_proj=Role.WRITE_ATTN,
                   mlp__gate_up_proj=Role.GATE_UP_FUSED, mlp__down_proj=Role.WRITE_FFN, **_PRE_NORMS),
            detect=("self_attn.qkv_proj.weight",), no_upcycle="no MoE family here shares phi3's fused attention", liger=True,
            fused_qkv="self_attn.qkv_proj",
        ),
        Family(
            "phi",  # Phi-2: attention and MLP in parallel from one LayerNorm, partial rotary, an lm_head bias
            _rules(self_attn__q_proj=Role.READ_ATTN, self_attn__k_proj=Role.READ_ATTN, self_attn__v_proj=Role.READ_ATTN,
                   self_attn__dense=Role.WRITE_ATTN, self_attn__q_layernorm=Role.HEAD_NORM, self_attn__k_layernorm=Role.HEAD_NORM,
                   mlp__fc1=Role.READ_FFN, mlp__fc2=Role.WRITE_FFN, input_layernorm=Role.RES_NORM),
            final_norm="model.final_layernorm", detect=("self_attn.dense.weight",), head_norm="self_attn.q_layernorm",
            no_upcycle="phi's GELU MLP and parallel residual have no MoE family here",
        ),
        Family(
            "starcoder2",
            _rules(**_LLAMA_ATTN, mlp__c_fc=Role.READ_FFN, mlp__c_proj=Role.WRITE_FFN, **_PRE_NORMS),
            tied_default=True, sliding_flag=None, detect=("mlp.c_fc.weight",),
            no_upcycle="starcoder2's GELU MLP with biases has no MoE family here",
        ),
        Family(
            "opt",  # learned positions (offset 2), ReLU MLP, LayerNorms with biases, all linears with biases
            _rules(self_attn__q_proj=Role.READ_ATTN, self_attn__k_proj=Role.READ_ATTN, self_attn__v_proj=Role.READ_ATTN,
                   self_attn__out_proj=Role.WRITE_ATTN, fc1=Role.READ_FFN, fc2=Role.WRITE_FFN,
                   self_attn_layer_norm=Role.RES_NORM, final_layer_norm=Role.RES_NORM),
            layer_prefix="model.decoder.layers.", embed="model.decoder.embed_tokens", final_norm="model.decoder.final_layer_norm",
            extra_embeds=("model.decoder.embed_positions",), tied_default=True, kv_heads_field=None, ffn_field="ffn_dim",
            hidden_fields=("word_embed_proj_dim",), detect=("fc1.weight", "self_attn.out_proj.weight"),
            refusals=(Refusal("word_embed_proj_dim", lambda v, cfg: v in (None, cfg.get("hidden_size")),
                              "its project_in/project_out between embedding and hidden sizes are not grown; only models "
                              "whose word_embed_proj_dim equals hidden_size are"),),
            no_upcycle="opt's ReLU MLP with biases has no MoE family here",
        ),
        Family(
            "gpt_neox",
            _rules(
                # query_key_value is per-head interleaved [h, (q k v), hd]: tiling whole rows
                # keeps copy c of head i at c*h + i, so it grows like a plain READ_ATTN.
                attention__query_key_value=Role.READ_ATTN,
                attention__dense=Role.WRITE_ATTN,
                mlp__dense_h_to_4h=Role.READ_FFN,
                mlp__dense_4h_to_h=Role.WRITE_FFN,
                input_layernorm=Role.RES_NORM,
                post_attention_layernorm=Role.RES_NORM,
            ),
            layer_prefix="gpt_neox.layers.",
            embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm",
            lm_head="embed_out",
            renames=(("lm_head.", "embed_out."),),
            kv_heads_field=None,
            fused_qkv="attention.query_key_value", fused_qkv_layout="per_head",
            ignore_suffixes=("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias"),
            detect=(),
            no_upcycle="gpt_neox's GELU MLP and parallel residual have no MoE family here",
        ),
        # MoE families: attention and norms as their dense kin, experts and routers from their MoeLayout;
        # the SwiGLU rules serve their dense layers (first_k_dense_replace, mlp_only_layers).
        Family("qwen3_moe", _rules(**_LLAMA_ATTN, **_QK_HEAD_NORMS, **_SWIGLU, **_PRE_NORMS), moe=MoeLayout("mlp.experts.{e}.{part}", dense_rule="qwen", experts_aliases=("num_local_experts",)), liger=True),
        Family("qwen2_moe", _LLAMA, moe=MoeLayout(
            "mlp.experts.{e}.{part}", shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate.weight",
            shared_field="shared_expert_intermediate_size", dense_rule="qwen", shared_required=True, any_activation=True,
            upcycle_config=(("qkv_bias", True),),
        )),
        Family("mixtral", _rules(**_LLAMA_ATTN, **_PRE_NORMS), moe=MoeLayout(
            "block_sparse_moe.experts.{e}.{part}", parts=("w1", "w3", "w2"), router="block_sparse_moe.gate.weight",
            norm_field=None, experts_field="num_local_experts", inter_field="intermediate_size",
            renames=(("mlp.", "block_sparse_moe."),), attention_bias=False,
        ), liger=True),
        Family("olmoe", _rules(**_LLAMA_ATTN, **_QK_PROJ_NORMS, **_PRE_NORMS), moe=MoeLayout("mlp.experts.{e}.{part}", inter_field="intermediate_size")),
        Family("glm4_moe", _rules(**_LLAMA_ATTN, **_QK_HEAD_NORMS, **_SWIGLU, **_PRE_NORMS), moe=MoeLayout(
            "mlp.experts.{e}.{part}", router_bias="mlp.gate.e_score_correction_bias", shared="mlp.shared_experts.",
            scoring="sigmoid", experts_field="n_routed_experts", shared_field="n_shared_experts", shared_kind="multiple",
            dense_rule="first_k", groups=True, attention_bias=False, sliding_window=False, qk_norm_field="use_qk_norm",
            upcycle_config=(("partial_rotary_factor", 1.0), ("routed_scaling_factor", 1.0), ("n_group", 1), ("topk_group", 1)),
        )),
        Family(
            "deepseek_v3",
            _rules(
                self_attn__q_proj=Role.READ_ATTN,  # when q_lora_rank is None
                self_attn__q_a_proj=Role.LATENT_READ,
                self_attn__q_a_layernorm=Role.HEAD_NORM,
                self_attn__q_b_proj=Role.HEAD_FROM_LATENT,
                self_attn__kv_a_proj_with_mqa=Role.LATENT_READ,
                self_attn__kv_a_layernorm=Role.HEAD_NORM,
                self_attn__kv_b_proj=Role.HEAD_FROM_LATENT,
                self_attn__o_proj=Role.WRITE_ATTN,
                **_SWIGLU,
                **_PRE_NORMS,
            ),
            moe=MoeLayout(
                "mlp.experts.{e}.{part}", router_bias="mlp.gate.e_score_correction_bias", shared="mlp.shared_experts.",
                scoring="sigmoid", experts_field="n_routed_experts", shared_field="n_shared_experts", shared_kind="multiple",
                dense_rule="first_k", groups=True,
                upcycle_refusal="deepseek_v3 uses multi-head latent attention, which no dense family's attention maps onto exactly",
            ), liger=True,
        ),
        Family("hunyuan_v1_moe", _rules(**_LLAMA_ATTN, self_attn__query_layernorm=Role.HEAD_NORM,
                                        self_attn__key_layernorm=Role.HEAD_NORM, **_PRE_NORMS), moe=MoeLayout(
            "mlp.experts.{e}.{part}", router="mlp.gate.wg.weight", shared="mlp.shared_mlp.", norm_field=None,
            topk_field="moe_topk", inter_field="intermediate_size", shared_kind="same", shared_required=True, router_fp32=True,
        ), liger=True),
        Family(
            "dots1", _rules(**_LLAMA_ATTN, **_QK_HEAD_NORMS, **_SWIGLU, **_PRE_NORMS),  # qwen3 attention, DeepSeek routing
            moe=MoeLayout(
                "mlp.experts.{e}.{part}", router_bias="mlp.gate.e_score_correction_bias", shared="mlp.shared_experts.",
                scoring="sigmoid", experts_field="n_routed_experts", shared_field="n_shared_experts", shared_kind="multiple",
                dense_rule="first_k", groups=True, attention_bias=False, sliding_window=False,
                upcycle_config=(("routed_scaling_factor", 1.0), ("n_group", 1), ("topk_group", 1)),
            ),
        ),
        Family(
            "gpt_oss",  # attention sinks, alternating sliding windows, clamped SwiGLU experts with biases
            _rules(**_LLAMA_ATTN, self_attn=Role.PROJ_NORM, **_PRE_NORMS),  # self_attn.sinks: one value per head, tiled like them
            param_names=("weight", "bias", "sinks"),
            moe=MoeLayout(
                "mlp.experts.{e}.{part}", parts=("gate_up_proj", "up_proj", "down_proj"), router="mlp.router.weight",
                memory_router="mlp.router", router_bias="mlp.router.bias", router_bias_param=True, norm_field=None, experts_field="num_local_experts",
                inter_field="intermediate_size", transposed=True, write_fused=True,
                expert_biases=("mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj_bias"),
                upcycle_refusal="gpt_oss's attention sinks and clamped SwiGLU experts have no dense family here",
            ), liger=True,
        ),
        Family("granitemoe", _rules(**_LLAMA_ATTN, **_PRE_NORMS), moe=MoeLayout(  # always fused on disk: input_linear [E, 2I, d], output_linear [E, d, I]
            "block_sparse_moe.experts.{e}.{part}", router="block_sparse_moe.router.layer.weight", norm_field=None,
            fused_gate_up="block_sparse_moe.input_linear.weight", fused_down="block_sparse_moe.output_linear.weight",
            write_fused=True, memory_experts="block_sparse_moe.experts", memory_router="block_sparse_moe.router",
            experts_field="num_local_experts",
            inter_field="intermediate_size", attention_bias=False,
            renames=(("block_sparse_moe.router.", "block_sparse_moe.router.layer."),
                     ("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.input_linear.weight"),
                     ("block_sparse_moe.experts.down_proj", "block_sparse_moe.output_linear.weight")),
        )),
    ]
}
MOE_LAYOUTS: dict[str, MoeLayout] = {name: f.moe for name, f in FAMILIES.items() if f.moe is not None}
DENSE_FAMILIES: tuple[str, ...] = tuple(name for name, f in FAMILIES.items() if f.moe is None)
# saved with the weights, but buffers in transformers (sigmoid routers' correction biases): never counted as parameters
BUFFERS: tuple[str, ...] = tuple(sorted({m.router_bias for m in MOE_LAYOUTS.values() if m.router_bias and not m.router_bias_param}))


def fused_qkv_rows(tensor, layout: str, heads: int, kv_heads: int) -> tuple:
    """Views of a fused q/k/v projection's weight or bias (its `fused_qkv_layout`): the q rows
    [heads, head_dim, ...], the k rows and the v rows [kv_heads, head_dim, ...]. QK-Clip scales the
    first two in place; Muon orthogonalises the three apart and writes them back through them."""
    if layout == "per_head":  # [heads, (q k v), head_dim]
        rows = tensor.view(heads, 3, -1, *tensor.shape[1:])
        return rows[:, 0], rows[:, 1], rows[:, 2]
    rows = tensor.view(heads + 2 * kv_heads, -1, *tensor.shape[1:])  # [q; k; v]
    return rows[:heads], rows[heads:heads + kv_heads], rows[heads + kv_heads:]


def families() -> list[dict]:
    """Every family hyperclone grows, as rows for people: `hyperclone presets` prints them."""
    rows = []
    for f in FAMILIES.values():
        if f.moe:
            moves = "width, depth, clone experts" + ("" if f.moe.shared_kind == "same" else " and split them")
        else:
            moves = "width, ffn, depth; " + (f"upcycle to {', '.join(f.upcycle_to)}" if f.upcycle_to else f"no upcycling: {f.no_upcycle}")
        rows.append({"family": f.model_type, "kind": "moe" if f.moe else "dense", "moves": moves,
                     "upcycle_to": list(f.upcycle_to), "tied_default": f.tied_default, "liger": f.liger})
    return rows


def family_for(model_type: str | None) -> Family:
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise UserError(
        f"unsupported model family {model_type!r}: hyperclone grows {', '.join(sorted(FAMILIES))}"
    )
