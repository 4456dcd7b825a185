"""Per-family tables: which tensor plays which role in the growth maths.

A family is data, not code: the operators in `hyperclone.ops` and the planner in
`hyperclone.plan` turn roles into tensors, so a new architecture costs one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

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
class Family:
    """Names and rules of one transformers model_type."""

    model_type: str
    rules: tuple[Rule, ...]
    layer_prefix: str = "model.layers."
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # Norms computing x * (offset + w): gemma's (1 + w). Fresh norms start at 1 - offset.
    norm_offset: float = 0.0
    # The embedding output is multiplied by sqrt(hidden_size) (gemma).
    embed_scale_sqrt_hidden: bool = False
    kv_heads_field: str | None = "num_key_value_heads"
    # Tensor names (suffixes) that hold no weights and are dropped, e.g. cached rotary tables.
    ignore_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # Field in config.json giving the inner FFN size.
    ffn_field: str = "intermediate_size"
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


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("llama", _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS)),
        Family("mistral", _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS)),
        Family("qwen2", _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS)),
        Family(
            "qwen3",
            _rules(**_LLAMA_ATTN, self_attn__q_norm=Role.HEAD_NORM, self_attn__k_norm=Role.HEAD_NORM, **_SWIGLU, **_PRE_NORMS),
        ),
        Family(
            "gemma2",
            _rules(
                **_LLAMA_ATTN,
                **_SWIGLU,
                **_PRE_NORMS,
                pre_feedforward_layernorm=Role.RES_NORM,
                post_feedforward_layernorm=Role.RES_NORM,
            ),
            norm_offset=1.0,
            embed_scale_sqrt_hidden=True,
        ),
        Family(
            "olmo2",
            _rules(
                **_LLAMA_ATTN,
                self_attn__q_norm=Role.PROJ_NORM,
                self_attn__k_norm=Role.PROJ_NORM,
                **_SWIGLU,
                post_attention_layernorm=Role.RES_NORM,
                post_feedforward_layernorm=Role.RES_NORM,
            ),
        ),
        Family(
            "phi3",
            _rules(
                self_attn__qkv_proj=Role.QKV_FUSED,
                self_attn__o_proj=Role.WRITE_ATTN,
                mlp__gate_up_proj=Role.GATE_UP_FUSED,
                mlp__down_proj=Role.WRITE_FFN,
                **_PRE_NORMS,
            ),
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
            ignore_suffixes=("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias"),
        ),
        # MoE families: attention and norms as below, experts/routers from hyperclone.arch.moe; the
        # SwiGLU rules serve their dense layers (first_k_dense_replace, mlp_only_layers).
        Family("qwen3_moe", _rules(**_LLAMA_ATTN, self_attn__q_norm=Role.HEAD_NORM, self_attn__k_norm=Role.HEAD_NORM, **_SWIGLU, **_PRE_NORMS)),
        Family("qwen2_moe", _rules(**_LLAMA_ATTN, **_SWIGLU, **_PRE_NORMS)),
        Family("mixtral", _rules(**_LLAMA_ATTN, **_PRE_NORMS)),
        Family("olmoe", _rules(**_LLAMA_ATTN, self_attn__q_norm=Role.PROJ_NORM, self_attn__k_norm=Role.PROJ_NORM, **_PRE_NORMS)),
        Family("glm4_moe", _rules(**_LLAMA_ATTN, self_attn__q_norm=Role.HEAD_NORM, self_attn__k_norm=Role.HEAD_NORM, **_SWIGLU, **_PRE_NORMS)),
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
        ),
        Family(
            "hunyuan_v1_moe",
            _rules(**_LLAMA_ATTN, self_attn__query_layernorm=Role.HEAD_NORM, self_attn__key_layernorm=Role.HEAD_NORM, **_PRE_NORMS),
        ),
    ]
}


def family_for(model_type: str | None) -> Family:
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise UserError(
        f"unsupported model family {model_type!r}: hyperclone grows {', '.join(sorted(FAMILIES))}"
    )
