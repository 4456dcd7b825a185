"""The planner: from a source checkpoint and a target, one recipe (list of segments) per output tensor.

Every output path — the streaming writer, the in-memory API, dry runs — consumes this plan, so the
maths lives in one place: roles (hyperclone.arch) decide the segments, operators
(hyperclone.ops) turn segments into tensors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import torch

from hyperclone.arch import BUFFERS, MOE_LAYOUTS, Family, Role
from hyperclone.arch.families import FFN_ROLES, NORMS, WRITES, role_tiling
from hyperclone.consistency import check_config_matches_weights
from hyperclone.dtypes import DTYPE_BY_NAME, NAME_BY_DTYPE, dominant_dtype
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint
from hyperclone.io.writer import format_size
from hyperclone.display import Table, shape_rows
from hyperclone.inspection import checkpoint_params
from hyperclone.moe import Ffn, MoePlanner, expand_fused_experts, moe_spec
from hyperclone.ops import Segment
from hyperclone.ops.split import SHARE_CAP
from hyperclone.spec import ModelSpec, config_for, spec_from_config
from hyperclone.targets import NOISE_CAP, Target



@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]
    segments: list[Segment]
    dtype: torch.dtype | None = None  # None: the plan's dtype (routers and their biases may stay float32)


@dataclass
class GrowthPlan(Table):
    source: Checkpoint
    target: Target
    src: ModelSpec
    dst: ModelSpec
    config: dict
    dtype: torch.dtype
    tensors: list[OutTensor]
    layer_map: list[int]
    inserted: list[bool]
    warnings: list[str] = field(default_factory=list)
    moe: dict | None = None  # experts, top_k, expert_inner, shared_inner, moe_layers of the target
    inactive_params: int = 0  # expert parameters a token does not use
    goal: dict | None = None  # for goal targets: the goal, the choice and the rejected alternative

    @property
    def total_params(self) -> int:
        """Parameters as transformers counts them: buffers saved with the weights are left out."""
        return sum(math.prod(t.shape) for t in self.tensors if not t.name.endswith(BUFFERS))

    @property
    def active_params(self) -> int:
        return self.total_params - self.inactive_params

    def dtype_of(self, tensor: OutTensor) -> torch.dtype:
        return tensor.dtype or self.dtype

    def bytes_of(self, tensor: OutTensor) -> int:
        return math.prod(tensor.shape) * self.dtype_of(tensor).itemsize

    @property
    def nbytes(self) -> int:
        return sum(self.bytes_of(t) for t in self.tensors)

    def rows(self) -> list[tuple]:
        """Before/after rows (shapes, experts, total and active parameters): the notebook's table and the card's."""
        rows = shape_rows(self.src.as_dict(), self.dst.as_dict(), checkpoint_params(self.source, self.src),
                          (self.total_params, self.active_params))
        if self.moe:
            layout = MOE_LAYOUTS.get(self.src.family)
            before = moe_spec(self.source.config, layout, self.src.layers) if layout else None
            rows.insert(6, ("experts (top-k)", f"{before.experts} (top-{before.top_k})" if before else "dense",
                            f"{self.moe['experts']} (top-{self.moe['top_k']})"))
        return rows

    def _table(self):
        rows = self.rows() + [("bytes", "", f"{format_size(self.nbytes)} ({NAME_BY_DTYPE[self.dtype]})")]
        return f"{self.src.family} → target {self.target.name}", ("", "source", "grown"), rows

    def operators(self) -> list[str]:
        s, d, t = self.src, self.dst, self.target
        ops = []
        if t.width > 1:
            ops.append(
                f"width x{t.width}: hidden {s.hidden}->{d.hidden}, heads {s.heads}->{d.heads}, "
                f"kv heads {s.kv_heads}->{d.kv_heads}, head_dim {s.head_dim}"
            )
        if t.ffn > 1:
            ops.append(f"ffn x{t.ffn}: intermediate {s.intermediate * t.width}->{d.intermediate}")
        if d.layers > s.layers:
            after = [self.layer_map[j] for j, new in enumerate(self.inserted) if new]
            where = ", ".join(f"{i}" + (f" (x{after.count(i)})" if after.count(i) > 1 else "") for i in sorted(set(after)))
            ops.append(f"depth {s.layers}->{d.layers}: {t.depth_init} layers with zeroed output projections after source layers {where}")
        if self.moe:
            ops.append(self.moe["operation"])
        if not ops:
            ops.append("identity (same shape)")
        return ops

    def summary(self) -> dict:
        return {
            "source": str(self.source.path),
            "family": self.src.family,
            "target": self.target.as_dict(),
            "source_spec": self.src.as_dict(),
            "target_spec": self.dst.as_dict(),
            "operators": self.operators(),
            "dtype": NAME_BY_DTYPE[self.dtype],
            "total_params": self.total_params,
            "active_params": self.active_params,
            "moe": self.moe,
            "bytes": self.nbytes,
            "layer_map": self.layer_map,
            "warnings": self.warnings,
            "goal": self.goal,
            "config": self.config,
        }


def depth_layout(layers: int, target_layers: int, insert_after: tuple[int, ...] | None) -> list[tuple[int, bool]]:
    """(source layer, inserted?) for each target layer; new layers follow the source layer they copy."""
    extra = target_layers - layers
    if insert_after is not None:
        if len(insert_after) != extra:
            raise UserError(f"insert_after names {len(insert_after)} positions but {extra} layers are added")
        bad = [p for p in insert_after if not 0 <= p < layers]
        if bad:
            raise UserError(f"insert_after position {bad[0]} is not a source layer (0..{layers - 1})")
        counts = [list(insert_after).count(i) for i in range(layers)]
    else:  # spread evenly
        counts = [((i + 1) * extra) // layers - (i * extra) // layers for i in range(layers)]
    out: list[tuple[int, bool]] = []
    for i in range(layers):
        out.append((i, False))
        out.extend([(i, True)] * counts[i])
    return out


class _Builder:
    """Turns (role, source tensor) into segments for one target layer."""

    def __init__(self, fam: Family, src: ModelSpec, target: Target, init_std: float):
        self.fam, self.src, self.t, self.init_std = fam, src, target, init_std

    def row_ranges(self, role: Role, rows: int) -> list[tuple[int, int]]:
        s = self.src
        if role is Role.QKV_FUSED:
            q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
            bounds = [0, q, q + kv, q + 2 * kv]
        elif role is Role.GATE_UP_FUSED:
            bounds = [0, rows // 2, rows]
        else:
            bounds = [0, rows]
        if bounds[-1] != rows:
            raise UserError(f"a fused tensor has {rows} rows, but the config implies {bounds[-1]}: config.json does not match the weights")
        return list(zip(bounds[:-1], bounds[1:]))

    def linear(self, out_name: str, src_name: str, shape: tuple, role: Role, is_bias: bool, new: bool) -> list[Segment]:
        tiles, parts = role_tiling(role, self.t.width, self.t.ffn)
        fresh = new and self.t.depth_init == "fresh"
        zero = new and role in WRITES
        segs = []
        for k, (r0, r1) in enumerate(self.row_ranges(role, shape[0])):
            rows, key = r1 - r0, f"{out_name}#{k}"
            if is_bias:
                if zero or fresh:
                    segs.append(Segment("zeros", rows, 1, key=key, repeat=tiles))
                else:
                    segs.append(Segment("copy", rows, 1, src_name, r0, key=key, repeat=tiles))
            elif zero:
                segs.append(Segment("zeros", rows, shape[1] * parts, key=key, repeat=tiles))
            elif fresh:
                segs.append(Segment("normal", rows, shape[1] * parts, value=self.init_std, key=key, repeat=tiles))
            else:
                segs.append(Segment("split", rows, shape[1], src_name, r0, copies=parts, noise=self.t.noise, key=key, repeat=tiles))
        return segs

    def norm(self, out_name: str, src_name: str, length: int, role: Role, is_bias: bool, new: bool) -> list[Segment]:
        copies = 1 if role is Role.HEAD_NORM else self.t.width
        if new and self.t.depth_init == "fresh":
            value = 0.0 if is_bias else 1.0 - self.fam.norm_offset
            return [Segment("fill", length, 1, value=value, key=out_name, repeat=copies)]
        return [Segment("copy", length, 1, src_name, 0, key=out_name, repeat=copies)]


def _check_shape(name: str, shape: tuple, role: Role, src: ModelSpec) -> None:
    if len(shape) == 2 and role is not Role.HEAD_FROM_LATENT:
        reads_residual = role not in WRITES
        width = shape[1] if reads_residual else shape[0]
        if width != src.hidden:
            raise UserError(f"{name} has shape {list(shape)} but the config says hidden_size {src.hidden}: config.json does not match the weights")


def build_plan(ckpt: Checkpoint, target: Target) -> GrowthPlan:
    config = ckpt.config
    src = spec_from_config(config)
    check_config_matches_weights(ckpt)
    fam = src.adapter
    fam.check(config, f"the source {ckpt.path}")
    n = target.width
    target_layers = target.layer_count(src.layers)
    layout = depth_layout(src.layers, target_layers, target.insert_after)
    dtype = DTYPE_BY_NAME[target.dtype] if target.dtype else dominant_dtype(ckpt.tensors.values())
    dst = replace(
        src,
        hidden=src.hidden * n,
        heads=src.heads * n,
        kv_heads=src.kv_heads * n,
        intermediate=src.intermediate * n * target.ffn,
        layers=target_layers,
    )
    warnings: list[str] = []
    init_std = float(config.get("initializer_range", 0.02))
    builder = _Builder(fam, src, target, init_std)
    layer_map = [i for i, _ in layout]
    if fam.model_type in MOE_LAYOUTS:
        expand_fused_experts(ckpt, MOE_LAYOUTS[fam.model_type], fam.layer_prefix)
    moe = MoePlanner(ckpt, fam, target, src.layers, layer_map, half=dtype != torch.float32)
    warnings += moe.warnings
    if dst == src and not moe.grows:
        raise UserError(f"target {target.name} grows nothing (width 1, ffn 1, {src.layers} layers, no new experts): "
                        "give width, ffn, layers or moe")
    if moe.active:
        dst = replace(dst, family=moe.arch)

    per_layer: dict[int, dict[str, str]] = {i: {} for i in range(src.layers)}
    layer_name = re.compile(r"^(\d+)\.(.+)\.(" + "|".join(fam.param_names) + ")$")
    for name in ckpt.tensors:
        if name.endswith(fam.ignore_suffixes):
            continue
        if name.startswith(fam.layer_prefix):
            index, _, rel = name[len(fam.layer_prefix) :].partition(".")
            if index.isdigit() and moe.claims(rel):
                continue  # experts, routers, shared experts: emitted by the MoE planner
        module, _, suffix = name.rpartition(".")
        if module in (fam.embed, fam.final_norm, fam.lm_head, *fam.extra_embeds) and suffix in ("weight", "bias"):
            continue  # emitted below
        if name.startswith(fam.layer_prefix) and (m := layer_name.match(name[len(fam.layer_prefix) :])):
            i, rel, suffix = int(m.group(1)), m.group(2), m.group(3)
            if fam.rule_for(rel) is None:
                raise UserError(f"tensor {name} is not part of a {fam.model_type} model hyperclone knows; is model_type right?")
            if i >= src.layers:
                raise UserError(f"tensor {name} is beyond num_hidden_layers={src.layers}: config.json does not match the weights")
            per_layer[i][f"{rel}.{suffix}"] = name
            continue
        raise UserError(f"tensor {name} is not part of a {fam.model_type} model hyperclone knows; is model_type right?")

    embed = fam.embed + ".weight"
    if embed not in ckpt.tensors:
        raise UserError(f"{ckpt.path} has no {embed}: not a {fam.model_type} checkpoint")
    empty = [i for i, t in per_layer.items() if not t]
    if empty:
        raise UserError(f"{ckpt.path} has no tensors for layer {empty[0]} of {src.layers}: the checkpoint is incomplete")
    vocab, hidden = ckpt.tensors[embed].shape
    if hidden != src.hidden or vocab != src.vocab:
        raise UserError(f"{embed} has shape {[vocab, hidden]} but config.json says vocab_size {src.vocab}, hidden_size {src.hidden}")

    sigma = 1.0 / math.sqrt(n) if fam.embed_scale_sqrt_hidden else 1.0
    if fam.embed_scale_sqrt_hidden and math.isqrt(n) ** 2 != n and dtype != torch.float32:
        warnings.append(
            f"{fam.model_type} multiplies embeddings by sqrt(hidden_size): width {n} needs E/sqrt({n}), which "
            f"{NAME_BY_DTYPE[dtype]} cannot hold exactly, so logits will differ slightly (use width 4 or --dtype float32)"
        )

    tensors: list[OutTensor] = []

    def add(name: str, vector: bool, segments: list[Segment], tensor_dtype: torch.dtype | None = None,
            shape: tuple | None = None) -> None:
        rows = sum(s.out_rows for s in segments)
        shape = shape or ((rows,) if vector else (rows, segments[0].out_cols))
        tensors.append(OutTensor(name, shape, segments, tensor_dtype))

    add(embed, False, [Segment("tile", vocab, hidden, embed, copies=n, scale=sigma)])
    for name in (f"{e}.weight" for e in fam.extra_embeds if f"{e}.weight" in ckpt.tensors):  # learned positions
        add(name, False, [Segment("tile", ckpt.tensors[name].shape[0], hidden, name, copies=n)])

    for j, (i, new) in enumerate(layout):
        becomes_moe = moe.active and moe.spec_out.moe_layers[j]
        for rel, src_name in sorted(per_layer[i].items()):
            module, suffix = rel.rsplit(".", 1)
            role = fam.rule_for(module).role
            if becomes_moe and role in FFN_ROLES:
                continue  # a dense FFN that becomes experts
            shape = ckpt.tensors[src_name].shape
            _check_shape(src_name, shape, role, src)
            out_name = f"{fam.layer_prefix}{j}.{rel}"
            is_bias = suffix == "bias"
            if role in NORMS:
                add(out_name, len(shape) == 1, builder.norm(out_name, src_name, shape[0], role, is_bias, new))
            else:
                add(out_name, len(shape) == 1, builder.linear(out_name, src_name, shape, role, is_bias, new))
        if becomes_moe:
            ffn = [per_layer[i].get(f"{module}.weight") for module in fam.swiglu or ()]
            dense_ffn = Ffn(*ffn, ckpt.tensors[ffn[0]].shape[0]) if ffn and all(ffn) else None
            for name, segs, tensor_dtype, shape in moe.mlp_tensors(j, i, new, dense_ffn, init_std):
                add(name, name.endswith((*BUFFERS, ".bias")), segs, tensor_dtype, shape)  # router biases are the vectors

    lm_head = fam.lm_head + ".weight"
    for suffix in ("weight", "bias"):
        name = f"{fam.final_norm}.{suffix}"
        if name not in ckpt.tensors:
            continue
        length = ckpt.tensors[name].shape[0]
        if dst.tied:
            offset = fam.norm_offset if suffix == "weight" else 0.0
            segs = [Segment("copy", length, 1, name, share=n, part=c, scale=1.0 / sigma, offset=offset) for c in range(n)]
        else:
            segs = [Segment("copy", length, 1, name, key=name, repeat=n)]
        add(name, True, segs)
    if not dst.tied:
        if lm_head not in ckpt.tensors:
            raise UserError(f"{ckpt.path} has no {lm_head} but tie_word_embeddings is false: the checkpoint is incomplete")
        add(lm_head, False, [Segment("split", vocab, hidden, lm_head, copies=n, noise=target.noise, key=lm_head)])
    if f"{fam.lm_head}.bias" in ckpt.tensors:  # phi: added to the logits, which do not grow
        add(f"{fam.lm_head}.bias", True, [Segment("copy", vocab, 1, f"{fam.lm_head}.bias")])

    cfg = config_for(config, src, dst, layer_map, NAME_BY_DTYPE[dtype])
    moe_summary, inactive = None, 0
    if moe.active:
        cfg = moe.config(cfg, dst)
        spec = moe.spec_out
        inner = spec.inter * n * target.ffn
        inactive = sum(spec.moe_layers) * (spec.experts - spec.top_k) * moe.layout.expert_params(dst.hidden, inner)
        moe_summary = {
            "arch": moe.arch, "experts": spec.experts, "top_k": spec.top_k, "expert_inner": inner,
            "shared_inner": spec.shared_inter * n * target.ffn, "moe_layers": [j for j, x in enumerate(spec.moe_layers) if x],
            "operation": moe.describe(),
        }
    if target.noise > NOISE_CAP:
        warnings.append(f"noise {target.noise:g} changes little over {NOISE_CAP:g}: the split keeps each copy within "
                        f"{SHARE_CAP:g}|w|/n of w/n, and {NOISE_CAP:g} already reaches that bound for almost every weight")
    if ckpt.config_inferred:
        warnings.append(
            "no config.json: sizes were read from tensor shapes; "
            + ", ".join(ckpt.config_inferred)
            + f" take transformers' defaults for {fam.model_type} (pass --config or --set to give them)"
        )
    return GrowthPlan(ckpt, target, src, dst, cfg, dtype, tensors, layer_map, [new for _, new in layout], warnings,
                      moe_summary, inactive)
