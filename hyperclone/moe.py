"""Mixture-of-experts growth: upcycling dense FFNs, cloning and splitting experts, widening MoE layers.

Exactness (DESIGN.md section 3) rests on one fact: identical experts whose routing weights sum to
the same total give the same output whatever the router picks. Every scale here follows from the
routing weight that one duplicated router row receives (see `_down_scale`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from hyperclone.arch import MOE_LAYOUTS, Role
from hyperclone.arch.moe import SHARED_PARTS, MoeLayout
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint, TensorInfo
from hyperclone.ops import Segment

# Said wherever a target meant for dense models meets a MoE source.
MOE_SOURCE_HINT = "to grow the experts of a MoE model use --to clone-2x (moe: {clone: N}) or moe: {split: N}"

# fields an upcycled model's config does not take from its dense source: the target family's own
NOT_CARRIED = {"model_type", "architectures", "transformers_version", "_name_or_path", "auto_map"}
# carried even where the target's config class does not declare them: its model reads them with getattr
ALWAYS_CARRIED = {"head_dim", "rope_theta", "rope_scaling", "layer_types", "attention_bias", "sliding_window",
                  "use_sliding_window", "max_window_layers"}
MOE_KEYS = {"arch", "experts", "top_k", "shared_experts", "dense_layers", "split", "clone", "router_init"}


@dataclass(frozen=True)
class MoeSpec:
    experts: int
    top_k: int
    inter: int  # each routed expert's inner size
    shared_inter: int  # the shared expert's inner size, 0 for none
    moe_layers: tuple[bool, ...]  # per layer: MoE (True) or dense
    normalised: bool  # top-k weights renormalised to sum to 1
    n_group: int = 1
    topk_group: int = 1


@dataclass(frozen=True)
class MoeTarget:
    arch: str | None = None
    experts: int | None = None
    top_k: int | None = None
    shared_experts: int | None = None
    dense_layers: int | None = None
    split: int = 1
    clone: int = 1
    router_init: float | None = None  # std of an upcycled model's random router (default: initializer_range)


def parse_moe_target(data) -> MoeTarget:
    if not isinstance(data, dict):
        raise UserError("moe: must be a mapping, e.g. moe: {arch: mixtral, experts: 8, top_k: 2}")
    unknown = set(data) - MOE_KEYS
    if unknown:
        raise UserError(f"moe: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(MOE_KEYS))})")
    out = {}
    for key, value in data.items():
        if key == "router_init":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"moe.router_init must be a number >= 0 (the random router's std), got {value!r}")
            out[key] = float(value)
            continue
        if key == "arch":
            if value not in MOE_LAYOUTS:
                raise UserError(f"unknown MoE arch {value!r}: choose one of {', '.join(MOE_LAYOUTS)}")
            out[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key in ("shared_experts", "dense_layers") else 1):
            raise UserError(f"moe.{key} must be a whole number{' >= 0' if key in ('shared_experts', 'dense_layers') else ' >= 1'}, got {value!r}")
        out[key] = value
    target = MoeTarget(**out)
    if target.experts is not None and target.top_k is not None and target.top_k > target.experts:
        raise UserError(f"moe.top_k {target.top_k} exceeds moe.experts {target.experts}: a token cannot pick more experts than exist")
    return target


def moe_spec(config: dict, layout: MoeLayout, layers: int) -> MoeSpec:
    """Read a MoE family's routing shape from its config."""
    experts = next((config[k] for k in layout.experts_keys() if config.get(k) is not None), None)
    top_k = config.get(layout.topk_field)
    if not isinstance(experts, int) or not isinstance(top_k, int):
        raise UserError(
            f"config.json needs integer {layout.experts_field} and {layout.topk_field} (per-layer lists are not supported)"
        )
    inter = config[layout.inter_field]
    if layout.shared_kind == "same":
        shared = inter
    elif layout.shared_field and config.get(layout.shared_field):
        shared = config[layout.shared_field] * (inter if layout.shared_kind == "multiple" else 1)
    else:
        shared = 0
    if layout.dense_rule == "qwen":
        dense = set(config.get("mlp_only_layers") or [])
        step = config.get("decoder_sparse_step") or 1
        moe_layers = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
    elif layout.dense_rule == "first_k":
        first = config.get("first_k_dense_replace") or 0
        moe_layers = tuple(i >= first for i in range(layers))
    else:
        moe_layers = (True,) * layers
    normalised = True if layout.norm_field is None else bool(config.get(layout.norm_field, False))
    groups = (config.get("n_group") or 1, config.get("topk_group") or 1) if layout.groups else (1, 1)
    return MoeSpec(experts, top_k, inter, shared, moe_layers, normalised, *groups)


def expand_fused_experts(ckpt: Checkpoint, layout: MoeLayout, layer_prefix: str) -> None:
    """Present fused 3D expert tensors ([E, 2I, d] gate_up, [E, d, I] down) as per-expert tensors.

    The per-expert views are byte ranges of the fused tensor, so they are read lazily like any other.
    """
    kinds = "|".join(re.escape(n) for n in (layout.fused_gate_up, layout.fused_down))
    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.(" + kinds + ")$")
    for name in [n for n in ckpt.tensors if pattern.match(n)]:
        info = ckpt.tensors.pop(name)
        layer, kind = pattern.match(name).groups()
        if info.offset < 0 or len(info.shape) != 3:
            raise UserError(f"{name}: fused experts are read from safetensors 3D tensors only; re-export the checkpoint")
        experts, rows, cols = info.shape
        if kind != layout.fused_gate_up:
            halves = [(0, rows, 2)]
        else:  # [gate; up] rows, or gpt_oss's [d, 2I] whole (gate and up interleaved in its columns)
            halves = [(0, rows, 0)] if layout.transposed else [(0, rows // 2, 0), (rows // 2, rows // 2, 1)]
        for e in range(experts):
            for start, count, part in halves:
                offset = info.offset + (e * rows + start) * cols * info.dtype.itemsize
                view = layout.expert_name(layer_prefix, int(layer), e, part)
                ckpt.tensors[view] = TensorInfo(view, (count, cols), info.dtype, info.file, offset)


def fused_from_experts(ckpt: Checkpoint, layout: MoeLayout, layer_prefix: str, j: int, rel: str, experts: list[int],
                       read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Rows `experts` of layer j's fused [E, 2I, d] gate_up or [E, d, I] down parameter (`rel`, named as
    transformers 5 has it in memory), assembled from the per-expert tensors on disk (gpt_oss: [E, d, 2I]
    and [E, I, d], and its per-expert biases, rows of their stored tensors)."""
    if rel.endswith("_bias"):
        return read(f"{layer_prefix}{j}.{layout.memory_experts}.{rel.rpartition('.')[2]}")[experts]
    parts = ((0,) if layout.transposed else (0, 1)) if rel.endswith("gate_up_proj") else (2,)
    rows = []
    for e in experts:
        names = [layout.expert_name(layer_prefix, j, e, p) for p in parts]
        if any(n not in ckpt.tensors for n in names):
            raise UserError(f"{ckpt.path} misses {names[0]}: the checkpoint is incomplete")
        rows.append(torch.cat([read(n) for n in names], dim=0))
    return torch.stack(rows)


@dataclass(frozen=True)
class Ffn:
    """The three tensors of one SwiGLU FFN (a dense MLP, an expert or a shared expert)."""

    gate: str
    up: str
    down: str
    inner: int


def _pow2(x: float) -> bool:
    """Whether multiplying by x is exact in binary floating point (1 included)."""
    return x > 0 and math.frexp(x)[0] == 0.5


class MoePlanner:
    """Decides the MoE shape of the target and emits the MLP tensors of MoE-involved layers."""

    @property
    def grows(self) -> bool:
        """Whether the experts change: an upcycle, or clone/split factors above 1."""
        return self.active and (self.src_layout is None or self.clone * self.split > 1)

    def __init__(self, ckpt: Checkpoint, src_family, target, src_layers: int, layer_map: list[int], half: bool):
        self.ckpt, self.fam, self.t = ckpt, src_family, target
        self.n, self.m_ffn = target.width, target.ffn
        self.src_layout = MOE_LAYOUTS.get(src_family.model_type)
        self.spec_in = moe_spec(ckpt.config, self.src_layout, src_layers) if self.src_layout else None
        mt = parse_moe_target(target.moe) if target.moe is not None else None
        self.warnings: list[str] = []
        self.active = self.src_layout is not None or mt is not None
        if not self.active:
            return
        mt = mt or MoeTarget()
        if self.src_layout is not None:
            self._plan_moe_source(mt, layer_map)
        else:
            self._plan_upcycle(mt, layer_map, src_layers)
        if half and not _pow2(self.down_scale):
            self.warnings.append(
                f"experts' down projections are scaled by {self.down_scale:g}, which half precision cannot apply "
                "exactly; logits will differ slightly (use power-of-two split/clone factors or --dtype float32)"
            )

    # ----- deciding the target -------------------------------------------------------------
    def _plan_moe_source(self, mt: MoeTarget, layer_map: list[int]) -> None:
        spec, layout = self.spec_in, self.src_layout
        if mt.arch not in (None, self.fam.model_type):
            raise UserError(f"a {self.fam.model_type} source stays {self.fam.model_type}: converting between MoE families "
                            f"is not supported; {MOE_SOURCE_HINT}")
        if mt.dense_layers is not None or mt.shared_experts is not None:
            raise UserError("moe.dense_layers and moe.shared_experts apply when upcycling a dense model; a MoE source keeps "
                            f"its own: {MOE_SOURCE_HINT}")
        clone, split = mt.clone, mt.split
        if mt.experts is not None:
            if mt.experts % (spec.experts * split):
                raise UserError(f"moe.experts {mt.experts} is not a multiple of the source's {spec.experts} experts x split {split}")
            clone = mt.experts // (spec.experts * split)
        t = clone * split
        if mt.top_k is not None and mt.top_k != spec.top_k * t:
            raise UserError(f"moe.top_k must be {spec.top_k * t} for this {spec.experts}-expert top-{spec.top_k} source: each "
                            f"chosen expert's {t} copies/slices are chosen together (presets such as moe-8x upcycle dense "
                            f"models; {MOE_SOURCE_HINT})")
        if spec.inter % split:
            raise UserError(f"moe.split {split} does not divide the expert inner size {spec.inter}: choose a divisor")
        if split > 1 and layout.shared_kind == "same":
            raise UserError(
                f"{self.fam.model_type} sizes its shared expert and its experts with one intermediate_size, so experts "
                "cannot be split without changing the shared expert: clone them instead (moe: {clone: 2})"
            )
        if t > 1 and spec.n_group > 1 and spec.topk_group < spec.n_group:
            raise UserError(
                f"grouped routing (n_group={spec.n_group}, topk_group={spec.topk_group}) scores groups by their top-2 experts, "
                "which duplicated experts change: only clone or split with topk_group == n_group"
            )
        self.layout, self.clone, self.split = layout, clone, split
        self.spec_out = MoeSpec(
            spec.experts * t, spec.top_k * t, spec.inter // split, spec.shared_inter,
            tuple(spec.moe_layers[i] for i in layer_map), spec.normalised, spec.n_group, spec.topk_group,
        )
        # weight each duplicated router row receives, relative to the original expert's
        share = 1.0 if layout.scoring == "sigmoid" and not spec.normalised else 1.0 / t
        self.down_scale = 1.0 / (clone * share)
        self.arch = self.fam.model_type

    def _plan_upcycle(self, mt: MoeTarget, layer_map: list[int], src_layers: int) -> None:
        src_type, allowed = self.fam.model_type, self.fam.upcycle_to
        if not allowed:
            raise UserError(f"{src_type} cannot be upcycled exactly: {self.fam.no_upcycle}")
        arch = mt.arch or allowed[0]
        if arch not in allowed:
            why = MOE_LAYOUTS[arch].upcycle_refusal or f"{src_type} attention cannot become {arch} exactly"
            raise UserError(f"{why}; archs that keep {src_type}'s attention: {', '.join(allowed)}")
        self._check_attention(arch)
        if mt.experts is None or mt.top_k is None:
            raise UserError("upcycling needs moe.experts and moe.top_k, e.g. moe: {arch: mixtral, experts: 8, top_k: 2}")
        layout = MOE_LAYOUTS[arch]
        split, dense_layers = mt.split, mt.dense_layers or 0
        cfg = self.ckpt.config
        inner = cfg[self.fam.ffn_field]
        if mt.experts % split or mt.top_k % split:
            raise UserError(f"moe.experts {mt.experts} and moe.top_k {mt.top_k} must be multiples of moe.split {split}")
        if inner % split:
            raise UserError(f"moe.split {split} does not divide the FFN inner size {inner}: choose a divisor")
        if dense_layers and layout.dense_rule is None:
            raise UserError(f"{arch} has no dense layers: moe.dense_layers must be 0")
        if dense_layers >= src_layers:
            raise UserError(f"moe.dense_layers {dense_layers} leaves no MoE layer among the source's {src_layers}")
        shared = mt.shared_experts if mt.shared_experts is not None else int(layout.shared_required)
        if layout.shared_required and not shared:
            raise UserError(f"{arch} always has a shared expert: set moe.shared_experts to 1")
        if layout.shared is None and shared:
            raise UserError(f"{arch} has no shared experts: set moe.shared_experts to 0")
        if layout.shared_kind == "same" and split > 1:
            raise UserError(f"{arch} sizes its shared expert and its experts with one intermediate_size: use moe.split 1")
        if layout.shared_kind in ("same", "size") and shared > 1:
            raise UserError(f"{arch} has one shared expert at most")
        # A shared expert as large as the FFN takes half of its output and the routed experts the other
        # half; a smaller one starts with a zero down projection and the routed experts take it all.
        expert_inner = inner // split
        shared_inner = 0
        if shared:
            shared_inner = {"multiple": expert_inner * shared, "same": expert_inner, "size": inner}[layout.shared_kind]
        self.shared_half = shared_inner == inner
        routed = 0.5 if self.shared_half else 1.0
        self.layout, self.clone, self.split, self.arch = layout, 1, split, arch
        self.router_init = mt.router_init
        self.spec_out = MoeSpec(
            mt.experts, mt.top_k, expert_inner, shared_inner,
            tuple(i >= dense_layers for i in layer_map), True,
        )
        # each of the split slices of a chosen copy gets 1/split of the copy's weight
        self.down_scale = routed * split

    def _check_attention(self, arch: str) -> None:
        cfg, src, layout = self.ckpt.config, self.fam.model_type, MOE_LAYOUTS[arch]
        if cfg.get("mlp_bias") or (cfg.get("attention_bias") and not layout.attention_bias):
            raise UserError(f"{arch} has no biases on these projections, and this {src} checkpoint has them")
        if self.fam.uses_sliding_window(cfg) and not layout.sliding_window:
            others = [a for a in self.fam.upcycle_to if MOE_LAYOUTS[a].sliding_window]
            raise UserError(f"{arch} has no sliding-window attention, and this checkpoint uses it"
                            + (f"; use {' or '.join(others)}" if others else ""))
        if cfg.get("hidden_act", "silu") != "silu" and not layout.any_activation:
            raise UserError(f"{arch} experts use SiLU, this {src} checkpoint uses {cfg.get('hidden_act')}")

    def describe(self) -> str:
        spec, before = self.spec_out, self.spec_in
        if before is None:
            return (f"upcycle dense FFN -> {self.arch}: {spec.experts} experts top-{spec.top_k} (split {self.split}), "
                    f"shared inner {spec.shared_inter}, random router, down projections x{self.down_scale:g}")
        return (f"experts {before.experts} -> {spec.experts} (clone x{self.clone}, split x{self.split}), "
                f"top-k {before.top_k} -> {spec.top_k}, down projections x{self.down_scale:g}")

    # ----- the target config ---------------------------------------------------------------
    def config(self, cfg: dict, dst_spec) -> dict:
        """Write the MoE fields of the target config (sizes already grown by width/ffn)."""
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        layout, spec = self.layout, self.spec_out
        grow = self.n * self.m_ffn
        if self.arch != cfg["model_type"]:  # upcycling into another family: its defaults, then every field both share
            base = AutoConfig.for_model(self.arch).to_dict()
            base.update({k: v for k, v in cfg.items() if (k in base or k in ALWAYS_CARRIED) and k not in NOT_CARRIED})
            base["model_type"] = self.arch
            base["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[self.arch]]
            base.update(layout.upcycle_config)
            if layout.qk_norm_field:
                base[layout.qk_norm_field] = any(r.role is Role.HEAD_NORM for r in self.fam.rules)
            cfg = base
        for key in [k for k in layout.experts_keys() if k in cfg] or [layout.experts_field]:
            cfg[key] = spec.experts
        cfg[layout.topk_field] = spec.top_k
        cfg[layout.inter_field] = spec.inter * grow
        if layout.norm_field:
            cfg[layout.norm_field] = spec.normalised
        if layout.shared_field and layout.shared_kind == "size":
            cfg[layout.shared_field] = spec.shared_inter * grow
        elif layout.shared_field and layout.shared_kind == "multiple":
            cfg[layout.shared_field] = spec.shared_inter // spec.inter if spec.shared_inter else 0
        dense = [j for j, is_moe in enumerate(spec.moe_layers) if not is_moe]
        if layout.dense_rule == "qwen":
            cfg["mlp_only_layers"] = dense
            cfg["decoder_sparse_step"] = 1
        elif layout.dense_rule == "first_k":
            if dense != list(range(len(dense))):
                raise UserError("dense layers must come first in this family; insert new layers after MoE layers only")
            cfg["first_k_dense_replace"] = len(dense)
        return cfg

    # ----- tensors -------------------------------------------------------------------------
    def claims(self, rel: str) -> bool:
        """Whether a source tensor (named relative to its layer) is MoE machinery handled here."""
        return self.src_layout is not None and self.src_layout.claims.fullmatch(rel) is not None

    def mlp_tensors(self, j: int, i: int, new: bool, dense_ffn: Ffn | None, init_std: float) -> list[tuple]:
        """(name, segments, dtype or None, shape or None) of target layer j's MoE block, from source layer i.

        Shape None: the rows the segments make. A layout transformers loads only fused gets its experts
        as 3D tensors whose rows are the per-expert tensors one after another, so no byte changes.
        """
        out = self._mlp_tensors(j, i, new, dense_ffn, init_std)
        if not self.layout.write_fused:
            return [(*entry, None) for entry in out]
        segments = {name: segs for name, segs, _ in out}
        fused = []
        for name, parts in self._fused_parts():
            per_expert = [self._part_name(j, e, p) for e in range(self.spec_out.experts) for p in parts]
            segs = [seg for part in per_expert for seg in segments.pop(part)]
            rows = sum(seg.out_rows for seg in segs) // self.spec_out.experts
            shape = (self.spec_out.experts, rows, segs[0].out_cols) if rows > 1 else (self.spec_out.experts, segs[0].out_cols)
            fused.append((f"{self.fam.layer_prefix}{j}.{name}", segs, None, shape))
        return [(name, segs, dtype, None) for name, segs, dtype in out if name in segments] + fused

    def _fused_parts(self) -> list[tuple[str, tuple]]:
        """(fused tensor, the per-expert parts stacked in it): [gate; up] and down, or gpt_oss's four."""
        layout = self.layout
        if not layout.transposed:
            return [(layout.fused_gate_up, (0, 1)), (layout.fused_down, (2,))]
        return [(layout.fused_gate_up, (0,)), (layout.fused_down, (2,)),
                (layout.expert_biases[0], ("bias0",)), (layout.expert_biases[1], ("bias1",))]

    def _part_name(self, j: int, e: int, part: int | str) -> str:
        """A per-expert output tensor before fusing; the biases of transposed layouts get private names."""
        if isinstance(part, int):
            return self.layout.expert_name(self.fam.layer_prefix, j, e, part)
        return f"{self.fam.layer_prefix}{j}.experts.{e}.{part}"

    def _mlp_tensors(self, j: int, i: int, new: bool, dense_ffn: Ffn | None, init_std: float) -> list[tuple]:
        """(name, segments, dtype or None) of target layer j's MoE block, with experts one tensor per part."""
        prefix, layout, spec = self.fam.layer_prefix, self.layout, self.spec_out
        fresh = new and self.t.depth_init == "fresh"
        out: list[tuple] = []
        if self.spec_in is not None and self.spec_in.moe_layers[i]:
            src = self.src_layout
            experts = [self._expert(src, i, e) for e in range(self.spec_in.experts)]
            t = self.clone * self.split
            for e, ffn in enumerate(experts):
                for a in range(self.clone):
                    for s in range(self.split):
                        e_out = (e * self.clone + a) * self.split + s
                        if src.transposed:
                            out += self._ffn_transposed(j, i, e, ffn, e_out, s, a, new, fresh, init_std)
                            continue
                        out += self._ffn(j, ffn, ("expert", e_out), s, self.split, a, self.clone, self.down_scale, new, fresh, init_std)
            out.append(self._router_rows(j, i, t, fresh, init_std))
            if src.router_bias:
                name = f"{prefix}{i}.{src.router_bias}"
                segs = [Segment("copy", 1, 1, name, start=e, repeat=t) for e in range(self.spec_in.experts)]
                out.append((f"{prefix}{j}.{layout.router_bias}", segs, None if src.router_bias_param else self.ckpt.tensors[name].dtype))
            if src.shared and self.spec_in.shared_inter:
                shared = Ffn(*(f"{prefix}{i}.{src.shared}{p}.weight" for p in SHARED_PARTS), self.spec_in.shared_inter)
                out += self._ffn(j, shared, ("shared",), 0, 1, 0, 1, 1.0, new, fresh, init_std)
            if src.shared_gate:
                name = f"{prefix}{i}.{src.shared_gate}"
                seg = Segment("normal", 1, self.n * self.ckpt.tensors[name].shape[1], value=init_std, key=name) if fresh else \
                    Segment("split", 1, self.ckpt.tensors[name].shape[1], name, copies=self.n)
                out.append((f"{prefix}{j}.{layout.shared_gate}", [seg], None))
            return out
        # upcycling a dense FFN
        if dense_ffn is None:
            raise UserError(f"source layer {i} has no SwiGLU FFN (gate_proj/up_proj/down_proj) to upcycle")
        copies = spec.experts // self.split
        for c in range(copies):
            for s in range(self.split):
                out += self._ffn(j, dense_ffn, ("expert", c * self.split + s), s, self.split, 0, 1, self.down_scale, new, fresh, init_std)
        width = self.n * self.ckpt.tensors[dense_ffn.gate].shape[1]
        router = f"{prefix}{j}.{layout.router}"
        rows = spec.experts // self.split
        # one random row per copy, repeated for its slices so they share the copy's score
        std = init_std if self.router_init is None else self.router_init
        router_segs = [Segment("normal", 1, width, value=std, key=f"{router}#{c}") for c in range(rows) for _ in range(self.split)]
        out.append((router, router_segs, None))
        if layout.router_bias:
            out.append((f"{prefix}{j}.{layout.router_bias}", [Segment("zeros", spec.experts, 1)], None))
        if spec.shared_inter:
            shared_scale = 0.5 if self.shared_half else 0.0
            if layout.shared_gate:  # sigmoid(0) = 1/2 multiplies the shared expert
                shared_scale *= 2
            slices = dense_ffn.inner // spec.shared_inter
            out += self._ffn(j, dense_ffn, ("shared",), 0, slices, 0, 1, shared_scale, new, fresh, init_std)
        if layout.shared_gate:
            out.append((f"{prefix}{j}.{layout.shared_gate}", [Segment("zeros", 1, width)], None))
        return out

    def _expert(self, layout: MoeLayout, i: int, e: int) -> Ffn:
        names = [layout.expert_name(self.fam.layer_prefix, i, e, p) for p in range(3)]
        if layout.transposed:  # one gate_up view, no separate up
            names[1] = ""
        missing = [n for n in names if n and n not in self.ckpt.tensors]
        if missing:
            raise UserError(f"{self.ckpt.path} misses {missing[0]}: the checkpoint is incomplete or config.json has the wrong expert count")
        inner = self.ckpt.tensors[names[2]].shape[0 if layout.transposed else 1]
        return Ffn(*names, inner)

    def _ffn_transposed(self, j: int, i: int, e: int, ffn: Ffn, e_out: int, s: int, a: int, new: bool, fresh: bool,
                        init_std: float) -> list[tuple]:
        """One output expert of a transposed layout (gpt_oss): `_ffn`'s maths with rows and columns swapped.

        Stored [in, out], the residual copies are row blocks, each an exact part of a split of the
        source rows, and the FFN copies are whole tiled columns (gate and up stay interleaved in pairs,
        so a slice of the inner size is a window of whole pairs). Biases: gate_up's tiled like its
        columns; down's tiled across the residual copies and kept whole for every copy and slice,
        since the copies' routing weights sum to the original's.
        """
        layout, prefix, n, noise = self.layout, self.fam.layer_prefix, self.n, self.t.noise
        tiles, clone = self.n * self.m_ffn, self.clone
        d = self.ckpt.tensors[ffn.gate].shape[0]
        rows = ffn.inner // self.split
        lo, hi = s * rows, (s + 1) * rows
        gate_up, down = self._part_name(j, e_out, 0), self._part_name(j, e_out, 2)
        if fresh:
            gate_up_segs = [Segment("normal", d, 2 * rows * tiles, value=init_std, key=gate_up, repeat=n)]
        else:
            gate_up_segs = [Segment("tile", d, 2 * rows, ffn.gate, cols=(2 * lo, 2 * hi), copies=tiles, share=n, part=c,
                                    share_noise=noise, share_key=gate_up) for c in range(n)]
        parts = tiles * clone
        if new or self.down_scale == 0.0:
            down_segs = [Segment("zeros", rows * tiles, d * n)]
        else:
            down_segs = [Segment("tile", rows, d, ffn.down, start=lo, copies=n, share=parts, part=a * tiles + k,
                                 scale=self.down_scale * clone, share_noise=noise if parts > 1 else 0.0,
                                 share_key=f"{ffn.down}#{s}") for k in range(tiles)]
        up_bias, down_bias = (f"{prefix}{i}.{b}" for b in layout.expert_biases)
        up_bias_seg = Segment("zeros", 1, 2 * rows * tiles) if fresh else \
            Segment("tile", 1, 2 * rows, up_bias, start=e, cols=(2 * lo, 2 * hi), copies=tiles)
        down_bias_seg = Segment("zeros", 1, d * n) if new else Segment("tile", 1, d, down_bias, start=e, copies=n)
        return [(gate_up, gate_up_segs, None), (down, down_segs, None),
                (self._part_name(j, e_out, "bias0"), [up_bias_seg], None), (self._part_name(j, e_out, "bias1"), [down_bias_seg], None)]

    def _router_rows(self, j: int, i: int, t: int, fresh: bool, init_std: float) -> tuple:
        src, dst = self.src_layout, self.layout
        name = f"{self.fam.layer_prefix}{i}.{src.router}"
        cols = self.ckpt.tensors[name].shape[1]
        if fresh:
            segs = [Segment("normal", self.spec_in.experts * t, cols * self.n, value=init_std, key=name)]
        else:  # each expert's router row, once per copy/slice; widened like any reader of the residual
            segs = [Segment("split", 1, cols, name, start=e, copies=self.n, repeat=t) for e in range(self.spec_in.experts)]
        dtype = self.ckpt.tensors[name].dtype if src.router_fp32 else None
        return (f"{self.fam.layer_prefix}{j}.{dst.router}", segs, dtype)

    def _ffn(self, j, ffn: Ffn, where: tuple, s: int, slices: int, a: int, clone: int, down_scale: float,
             new: bool, fresh: bool, init_std: float) -> list[tuple]:
        """Gate, up and down of one output FFN: slice s of `slices` of `ffn`, copy a of `clone`."""
        layout, prefix = self.layout, self.fam.layer_prefix
        if where[0] == "expert":
            names = [layout.expert_name(prefix, j, where[1], p) for p in range(3)]
        else:
            names = [f"{prefix}{j}.{layout.shared}{p}.weight" for p in SHARED_PARTS]
        width = self.ckpt.tensors[ffn.gate].shape[1]
        rows = ffn.inner // slices
        lo, hi = s * rows, (s + 1) * rows
        n, tiles = self.n, self.n * self.m_ffn
        out = []
        for name, source in zip(names[:2], (ffn.gate, ffn.up)):
            if fresh:
                segs = [Segment("normal", rows, width * n, value=init_std, key=name, repeat=tiles)]
            else:
                segs = [Segment("split", rows, width, source, start=lo, copies=n, noise=self.t.noise, key=name, repeat=tiles)]
            out.append((name, segs, None))
        d = self.ckpt.tensors[ffn.down].shape[0]
        if new or down_scale == 0.0:
            segs = [Segment("zeros", d, rows * tiles, repeat=n)]
        else:
            segs = [
                Segment("split", d, rows, ffn.down, cols=(lo, hi), copies=tiles, noise=self.t.noise, key=names[2],
                        share=clone, part=a, scale=down_scale * clone, share_noise=self.t.noise if clone > 1 else 0.0,
                        share_key=f"{ffn.down}#{s}", repeat=n)
            ]
        out.append((names[2], segs, None))
        return out
