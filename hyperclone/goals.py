"""Goal targets: reach a parameter budget (total, active) with function-preserving moves only.

A goal names sizes, not multipliers: `total_params: 1.04T, active_params: 32B` plus a preferred
`shape` (hidden, layers, experts, top_k, shared_experts, dense_layers) and hard `constraints`.
The solver enumerates the moves the source allows — width x n, FFN x m, identity layers,
upcycling into each MoE family the source maps onto exactly, expert cloning and splitting, shared
experts — counts each candidate's parameters in closed form from the source's own tensor shapes
(the same role tiling the planner uses), and picks the candidate nearest the goal and the shape.
The chosen Target then goes through the ordinary planner, whose exact count is checked again.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace

from hyperclone.arch import Role
from hyperclone.arch.families import FFN_ROLES, NORMS, role_tiling
from hyperclone.arch import MOE_LAYOUTS, MoeLayout
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint
from hyperclone.spec import spec_from_config
from hyperclone.dtypes import DTYPE_BY_NAME, DTYPE_NAMES, dominant_dtype
from hyperclone.moe import expand_fused_experts, moe_spec
from hyperclone.targets import DEFAULT_NOISE, GOAL_MARKERS, Target, named_target, target_from_dict

TOTAL_TOLERANCE = 0.10
ACTIVE_TOLERANCE = 0.15
GOAL_KEYS = {"description", "total_params", "active_params", "shape", "constraints", "noise", "seed", "dtype", "depth_init"}
SHAPE_KEYS = {"hidden", "layers", "experts", "top_k", "shared_experts", "dense_layers"}
CONSTRAINT_KEYS = {"arch", "experts", "top_k", "shared_experts", "dense_layers", "max_width", "max_ffn"}
DEFAULT_MAX_WIDTH = 512
FFN_WEIGHT = 0.2  # an FFN x2 (a distorted FFN:hidden ratio) costs about as much as a 14% miss of the budget
SHAPE_WEIGHT = 2.0  # a 1% step away from the preferred shape costs as much as a 2% miss of the budget
DEFAULT_MAX_FFN = 64
UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Goal:
    name: str
    total: int
    active: int | None = None
    shape: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    noise: float = DEFAULT_NOISE
    seed: int = 0
    dtype: str | None = None
    depth_init: str = "copy"
    description: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "total_params": self.total, "active_params": self.active, "shape": self.shape,
                "constraints": self.constraints, "noise": self.noise, "seed": self.seed, "dtype": self.dtype}


def parse_count(key: str, value) -> int:
    """1040000000000, 1.04e12, '1.04T', '32B', '389B' -> an integer parameter count."""
    if isinstance(value, bool):
        raise UserError(f"{key} must be a parameter count such as 32B or 1.04T, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([KMBGT]?)\s*", str(value), re.IGNORECASE)
        if not match:
            raise UserError(f"{key} must be a parameter count such as 32B or 1.04T, got {value!r}")
        number = float(match.group(1)) * UNITS[match.group(2).upper()]
    if not math.isfinite(number) or number < 1:
        raise UserError(f"{key} must be a positive parameter count, got {value!r}")
    return int(number)


def _whole(where: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return value


def goal_from_dict(data: dict, name: str) -> Goal:
    for key in data:
        if key not in GOAL_KEYS:
            raise UserError(f"goal {name}: unknown key {key!r} (a goal takes {', '.join(sorted(GOAL_KEYS))})")
    total = parse_count("total_params", data.get("total_params"))
    active = parse_count("active_params", data["active_params"]) if data.get("active_params") is not None else None
    if active is not None and active > total:
        raise UserError(f"goal {name}: active_params {active:,} exceeds total_params {total:,}")
    shape, constraints = data.get("shape") or {}, data.get("constraints") or {}
    for block, keys, label in ((shape, SHAPE_KEYS, "shape"), (constraints, CONSTRAINT_KEYS, "constraints")):
        if not isinstance(block, dict):
            raise UserError(f"goal {name}: {label} must be a mapping")
        for key, value in block.items():
            if key not in keys:
                raise UserError(f"goal {name}: unknown {label} key {key!r} (known: {', '.join(sorted(keys))})")
            if key == "arch":
                if value not in MOE_LAYOUTS:
                    raise UserError(f"goal {name}: constraints.arch {value!r} is not a MoE family ({', '.join(MOE_LAYOUTS)})")
            else:
                _whole(f"{label}.{key}", value, 0 if key in ("shared_experts", "dense_layers") else 1)
    out = dict(name=name, total=total, active=active, shape=dict(shape), constraints=dict(constraints))
    noise = data.get("noise", DEFAULT_NOISE)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise UserError(f"noise must be a number >= 0, got {noise!r}")
    out["noise"] = float(noise)
    out["seed"] = _whole("seed", data.get("seed", 0), 0)
    if data.get("dtype") is not None and data["dtype"] not in DTYPE_NAMES:
        raise UserError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {data['dtype']!r}")
    out["dtype"] = data.get("dtype")
    if data.get("depth_init", "copy") not in ("copy", "fresh"):
        raise UserError(f"depth_init must be 'copy' or 'fresh', got {data['depth_init']!r}")
    out["depth_init"] = data.get("depth_init", "copy")
    out["description"] = str(data.get("description", ""))
    return Goal(**out)


# ----- closed-form parameter counts ---------------------------------------------------------------
def _grown_size(shape: tuple, role: Role, n: int, m: int) -> int:
    if role in NORMS:
        return shape[0] * (1 if role is Role.HEAD_NORM else n)
    tiles, parts = role_tiling(role, n, m)
    return shape[0] * tiles * (shape[1] * parts if len(shape) == 2 else 1)


@dataclass(frozen=True)
class Counter:
    """Parameter counts of the source's parts as functions of the moves (terms: coefficient, power of n, of m)."""

    attention: tuple[tuple[int, int, int], ...]  # one layer's attention and norms
    dense_ffn: tuple[tuple[int, int, int], ...]  # one dense FFN
    outside: tuple[tuple[int, int, int], ...]  # embeddings, final norm, lm_head

    @staticmethod
    def terms(tensors: list[tuple[tuple, Role]]) -> tuple[tuple[int, int, int], ...]:
        out: dict[tuple[int, int], int] = {}
        for shape, role in tensors:
            # a size is c * n^pn * m^pm: read the powers off evaluations at n=2 and m=2
            base = _grown_size(shape, role, 1, 1)
            pn = round(math.log2(_grown_size(shape, role, 2, 1) / base))
            pm = round(math.log2(_grown_size(shape, role, 1, 2) / base))
            out[(pn, pm)] = out.get((pn, pm), 0) + base
        return tuple((c, pn, pm) for (pn, pm), c in out.items())

    @staticmethod
    def value(terms, n: int, m: int) -> int:
        return sum(c * n**pn * m**pm for c, pn, pm in terms)


@dataclass
class Candidate:
    width: int
    ffn: int
    layers: int
    arch: str | None = None  # the MoE family of the target; None: dense
    experts: int = 0
    top_k: int = 0
    split: int = 1
    clone: int = 1
    shared: int = 0
    dense: int = 0
    total: int = 0
    active: int = 0
    score: float = math.inf
    within: bool = False
    parts: dict = field(default_factory=dict)  # the score's components, for explaining choices

    def describe(self, src_hidden: int, src_layers: int) -> str:
        text = f"width x{self.width} (hidden {src_hidden}->{src_hidden * self.width}), ffn x{self.ffn}, layers {src_layers}->{self.layers}"
        if self.arch:
            text += (f", {self.arch} with {self.experts} experts top-{self.top_k}"
                     + (f" (clone x{self.clone})" if self.clone > 1 else "") + (f" (split x{self.split})" if self.split > 1 else "")
                     + f", {self.shared} shared, {self.dense} dense layer{'s' if self.dense != 1 else ''}")
        return text


def _divisors(x: int, limit: int = 64) -> list[int]:
    return [d for d in range(1, min(x, limit) + 1) if x % d == 0]


def _near_multiples(value: int | None, step: int, fallback: list[int]) -> list[int]:
    if value is None:
        return sorted({v for v in fallback if v % step == 0})
    lo = max(step, (value // step) * step)
    return sorted({lo, lo + step} if lo != value else {lo})


class Solver:
    """Enumerates reachable targets for one source and goal, scores them, explains the pick."""

    def __init__(self, ckpt: Checkpoint, goal: Goal):
        self.ckpt, self.goal = ckpt, goal
        self.src = spec_from_config(ckpt.config)
        self.fam = self.src.adapter
        self.fam.check(ckpt.config, f"the source {ckpt.path}")
        self.layout = MOE_LAYOUTS.get(self.fam.model_type)
        if self.layout:
            expand_fused_experts(ckpt, self.layout, self.fam.layer_prefix)
            self.moe_in = moe_spec(ckpt.config, self.layout, self.src.layers)
        else:
            self.moe_in = None
        self.counter = self._counter()
        dtype = DTYPE_BY_NAME[goal.dtype] if goal.dtype else dominant_dtype(ckpt.tensors.values())
        # half precision scales experts exactly only by powers of two (see MoePlanner's warning)
        self.factor_ok = (lambda f: f & (f - 1) == 0) if dtype.itemsize == 2 else (lambda f: True)

    # -- counting ---------------------------------------------------------------------------
    def _layer_tensors(self, layer: int) -> list[tuple[str, tuple, Role]]:
        claimed = self.layout.claims if self.layout else None
        prefix = f"{self.fam.layer_prefix}{layer}."
        out = []
        for name, info in self.ckpt.tensors.items():
            if not name.startswith(prefix) or name.endswith(self.fam.ignore_suffixes):
                continue
            rel = name[len(prefix):]
            if claimed is not None and claimed.fullmatch(rel):
                continue
            rule = self.fam.rule_for(rel.rsplit(".", 1)[0])
            if rule is None:
                raise UserError(f"tensor {name} is not part of a {self.fam.model_type} model hyperclone knows; is model_type right?")
            out.append((rel, info.shape, rule.role))
        return out

    def _counter(self) -> Counter:
        fam, src = self.fam, self.src
        layer0 = self._layer_tensors(0)
        attention = [(s, r) for _, s, r in layer0 if r not in FFN_ROLES]
        dense_layer = 0
        if self.moe_in is not None:
            dense_layer = next((i for i, moe in enumerate(self.moe_in.moe_layers) if not moe), None)
        dense = [(s, r) for _, s, r in self._layer_tensors(dense_layer) if r in FFN_ROLES] if dense_layer is not None else []
        # embeddings (token and learned positions): columns x n; an lm_head bias: fixed (HEAD_NORM never grows)
        outside = [((src.vocab, src.hidden), Role.LATENT_READ)]
        outside += [(self.ckpt.tensors[f"{e}.weight"].shape, Role.LATENT_READ) for e in fam.extra_embeds
                    if f"{e}.weight" in self.ckpt.tensors]
        if f"{fam.lm_head}.bias" in self.ckpt.tensors:
            outside.append(((src.vocab,), Role.HEAD_NORM))
        for suffix in ("weight", "bias"):
            if f"{fam.final_norm}.{suffix}" in self.ckpt.tensors:
                outside.append(((src.hidden,), Role.RES_NORM))
        if not src.tied:
            outside.append(((src.vocab, src.hidden), Role.LATENT_READ))
        return Counter(Counter.terms(attention), Counter.terms(dense), Counter.terms(outside))

    def count(self, c: Candidate) -> tuple[int, int]:
        """(total, active) of a candidate, as transformers counts them (buffers excluded)."""
        n, m, d = c.width, c.ffn, self.src.hidden * c.width
        attention = Counter.value(self.counter.attention, n, 1)
        dense_ffn = Counter.value(self.counter.dense_ffn, n, m)
        total = Counter.value(self.counter.outside, n, 1) + c.layers * attention
        if c.arch is None:
            total += c.layers * dense_ffn
            return total, total
        layout = MOE_LAYOUTS[c.arch]
        inner = self._expert_inner(c) * n * m
        per_layer = c.experts * (layout.expert_params(d, inner) + d + layout.router_bias_param)
        shared_inner = self._shared_inner(c, layout) * n * m
        per_layer += 3 * d * shared_inner + (d if layout.shared_gate else 0)
        moe_layers = c.layers - c.dense
        total += c.dense * dense_ffn + moe_layers * per_layer
        return total, total - moe_layers * (c.experts - c.top_k) * layout.expert_params(d, inner)

    def _expert_inner(self, c: Candidate) -> int:
        base = self.moe_in.inter if self.moe_in else self.ckpt.config[self.fam.ffn_field]
        return base // c.split

    def _shared_inner(self, c: Candidate, layout: MoeLayout) -> int:
        if self.moe_in is not None:
            return self.moe_in.shared_inter
        if not c.shared:
            return 0
        return {"multiple": self._expert_inner(c) * c.shared, "same": self._expert_inner(c),
                "size": self.ckpt.config[self.fam.ffn_field]}[layout.shared_kind]

    # -- enumerating ------------------------------------------------------------------------
    def _moe_wanted(self) -> bool:
        g = self.goal
        if self.moe_in is not None:
            return True
        if any(k in g.constraints for k in ("arch", "experts", "top_k")):
            return True
        return g.active is not None and g.active < 0.9 * g.total

    def _skeletons(self) -> list[Candidate]:
        """Every discrete choice (arch, experts, top-k, split, clone, shared, dense) the constraints allow."""
        fixed = {"experts": "experts", "top_k": "top_k", "shared_experts": "shared", "dense_layers": "dense"}
        cons = self.goal.constraints
        return [c for c in self._choices() if all(getattr(c, attr) == cons[key] for key, attr in fixed.items() if key in cons)]

    def _choices(self) -> list[Candidate]:
        """Every discrete choice the source's moves allow, width and ffn left open."""
        cons, shape = self.goal.constraints, self.goal.shape
        layers = max(shape.get("layers", self.src.layers), self.src.layers)
        if not self._moe_wanted():
            return [Candidate(1, 1, layers)]
        want_e, want_k = cons.get("experts", shape.get("experts")), cons.get("top_k", shape.get("top_k"))
        out = []
        if self.moe_in is not None:
            spec, arch = self.moe_in, self.fam.model_type
            if cons.get("arch", arch) != arch:
                raise UserError(f"a {arch} source stays {arch}: constraints.arch {cons['arch']} is not reachable")
            grouped = spec.n_group > 1 and spec.topk_group < spec.n_group
            splits = [1] if self.layout.shared_kind == "same" or grouped else _divisors(spec.inter)
            for s in filter(self.factor_ok, splits):
                clones = {1}
                for want, base in ((want_e, spec.experts), (want_k, spec.top_k)):
                    if want:
                        clones |= {max(1, want // (base * s)), max(1, -(-want // (base * s)))}
                for c in sorted(clones):
                    if (grouped and c > 1) or not self.factor_ok(c):
                        continue
                    out.append(Candidate(1, 1, layers, arch, spec.experts * c * s, spec.top_k * c * s, s, c,
                                         int(spec.shared_inter > 0), sum(not x for x in spec.moe_layers)))
            return out
        allowed = self.fam.upcycle_to
        if not allowed:
            raise UserError(f"the goal needs experts, and {self.fam.model_type} cannot be upcycled exactly: {self.fam.no_upcycle}")
        inner = self.ckpt.config[self.fam.ffn_field]
        for arch in allowed:
            if cons.get("arch", arch) != arch:
                continue
            layout = MOE_LAYOUTS[arch]
            shared_options = {0, 1} if layout.shared is not None else {0}
            if layout.shared_kind == "multiple":  # several shared experts are one wider one
                shared_options |= {v for v in (shape.get("shared_experts"), cons.get("shared_experts")) if v}
            if layout.shared_required:
                shared_options.discard(0)
            dense_options = {0, min(shape.get("dense_layers", 0), self.src.layers - 1)} if layout.dense_rule else {0}
            if "dense_layers" in cons and cons["dense_layers"] < self.src.layers and layout.dense_rule:
                dense_options.add(cons["dense_layers"])
            for s in filter(self.factor_ok, [1] if layout.shared_kind == "same" else _divisors(inner)):
                experts = [cons["experts"]] if "experts" in cons else _near_multiples(want_e, s, [8, 16, 32, 64, 128, 256])
                top_ks = [cons["top_k"]] if "top_k" in cons else _near_multiples(want_k, s, [1, 2, 4, 8])
                for e in experts:
                    for k in top_ks:
                        if e % s or k % s or k > e:
                            continue
                        for shared in shared_options:
                            out.extend(Candidate(1, 1, layers, arch, e, k, s, 1, shared, dense) for dense in dense_options)
        return out

    def _width_windows(self) -> list[range]:
        """Widths to try, nearest the shape's hidden size first; wider windows only when nothing fits."""
        cap = self.goal.constraints.get("max_width", DEFAULT_MAX_WIDTH)
        hidden = self.goal.shape.get("hidden")
        if hidden is None:
            return [range(1, cap + 1)]
        want = hidden / self.src.hidden
        windows = []
        for factor in (1.25, 2.0):
            lo, hi = max(1, min(cap, math.floor(want / factor))), min(cap, math.ceil(want * factor))
            windows.append(range(lo, hi + 1))
        return windows + [range(1, cap + 1)]

    def candidates(self, skeletons: list[Candidate], widths: range) -> list[Candidate]:
        g = self.goal
        max_ffn = g.constraints.get("max_ffn", DEFAULT_MAX_FFN)
        out = []
        for skeleton in skeletons:
            for n in widths:
                base = replace(skeleton, width=n, ffn=1)
                t1, a1 = self.count(base)
                t2, a2 = self.count(replace(base, ffn=2))
                ffns = {1}
                for want, at1, per_m in ((g.total, t1, t2 - t1), (g.active, a1, a2 - a1)):
                    if want is not None and per_m > 0:
                        m = (want - at1) / per_m + 1
                        ffns |= {max(1, min(max_ffn, math.floor(m))), max(1, min(max_ffn, math.ceil(m)))}
                for m in ffns:
                    c = replace(base, ffn=m)
                    c.total, c.active = self.count(c)
                    self._score(c)
                    out.append(c)
        return out

    def _score(self, c: Candidate) -> None:
        g, shape = self.goal, self.goal.shape
        err_t = c.total / g.total - 1
        err_a = c.active / g.active - 1 if g.active else 0.0
        c.within = abs(err_t) <= TOTAL_TOLERANCE and abs(err_a) <= ACTIVE_TOLERANCE
        parts = {"total": abs(err_t), "active": abs(err_a), "ffn": FFN_WEIGHT * math.log(c.ffn)}
        for key, value in (("hidden", self.src.hidden * c.width), ("layers", c.layers), ("experts", c.experts), ("top_k", c.top_k)):
            if shape.get(key) and value:
                parts[key] = SHAPE_WEIGHT * abs(math.log(value / shape[key]))
            elif shape.get(key):
                parts[key] = 2.0
        for key, value in (("shared_experts", c.shared), ("dense_layers", c.dense)):
            if key in shape:
                parts[key] = 0.5 * abs(value - shape[key])
        if c.arch and self.moe_in is None:
            parts["arch"] = 0.02 * self.fam.upcycle_to.index(c.arch)
        c.parts = parts
        c.score = sum(parts.values()) + (0.0 if c.within else 1000.0)

    # -- choosing ---------------------------------------------------------------------------
    def solve(self) -> tuple[Target, dict]:
        g = self.goal
        skeletons = self._skeletons()
        for widths in self._width_windows():
            found = sorted(self.candidates(skeletons, widths), key=lambda c: c.score)
            if found and found[0].within:
                break
        if not found or not found[0].within:
            near = min(found, key=lambda c: c.parts["total"] + c.parts["active"]) if found else None
            where = (f"; nearest reachable: total {_human(near.total)}, active {_human(near.active)} ({near.describe(self.src.hidden, self.src.layers)})"
                     if near else "")
            raise UserError(
                f"goal {g.name} (total {_human(g.total)}" + (f", active {_human(g.active)}" if g.active else "")
                + f") is not reachable from this {self.fam.model_type} source within ±{TOTAL_TOLERANCE:.0%} total"
                + (f" / ±{ACTIVE_TOLERANCE:.0%} active" if g.active else "") + where
            )
        best = found[0]
        rival = next((c for c in found[1:] if c.arch != best.arch), None) or next(
            (c for c in found[1:] if (c.width, c.experts, c.top_k) != (best.width, best.experts, best.top_k)), None)
        return self.target(best), self.explain(best, rival)

    def target(self, c: Candidate) -> Target:
        g = self.goal
        extra = c.layers - self.src.layers
        if self.moe_in is not None:
            eligible = [i for i, moe in enumerate(self.moe_in.moe_layers) if moe] or list(range(self.src.layers))
        else:
            eligible = list(range(c.dense, self.src.layers)) if c.arch else list(range(self.src.layers))
        insert = sorted(eligible[(k * len(eligible)) // extra] if extra <= len(eligible) else eligible[k % len(eligible)]
                        for k in range(extra))
        moe = None
        if c.arch and self.moe_in is not None:
            moe = {"clone": c.clone, "split": c.split}
        elif c.arch:
            moe = {"arch": c.arch, "experts": c.experts, "top_k": c.top_k, "split": c.split,
                   "shared_experts": c.shared, "dense_layers": c.dense}
        return Target(name=g.name, width=c.width, ffn=c.ffn, layers=c.layers, noise=g.noise, seed=g.seed,
                      depth_init=g.depth_init, insert_after=tuple(insert), dtype=g.dtype, moe=moe, description=g.description)

    def explain(self, best: Candidate, rival: Candidate | None) -> dict:
        g = self.goal
        out = {
            "goal": g.as_dict(),
            "chosen": best.describe(self.src.hidden, self.src.layers),
            "total_error": best.total / g.total - 1,
            "active_error": (best.active / g.active - 1) if g.active else None,
            "tolerance": {"total": TOTAL_TOLERANCE, "active": ACTIVE_TOLERANCE},
            "rejected": None,
            "counted": [best.total, best.active],
        }
        if rival is not None:
            out["rejected"] = f"{rival.describe(self.src.hidden, self.src.layers)}: {self._why_worse(best, rival)}"
        return out

    def _why_worse(self, best: Candidate, rival: Candidate) -> str:
        g = self.goal
        if not rival.within:
            return (f"total {_human(rival.total)} ({rival.total / g.total - 1:+.1%})"
                    + (f", active {_human(rival.active)} ({rival.active / g.active - 1:+.1%})" if g.active else "")
                    + " is outside the tolerance")
        worse = sorted(((rival.parts.get(k, 0) - v, k) for k, v in best.parts.items()), reverse=True)
        reasons = []
        for delta, key in worse[:2]:
            if delta <= 1e-9:
                break
            reasons.append({
                "total": f"total {_human(rival.total)} is further from {_human(g.total)}",
                "active": f"active {_human(rival.active)} is further from {_human(g.active or 0)}",
                "ffn": f"a larger FFN multiplier (x{rival.ffn}) distorts the source's FFN:hidden ratio more",
                "hidden": f"hidden {self.src.hidden * rival.width} is further from the shape's {g.shape.get('hidden')}",
                "layers": f"{rival.layers} layers is further from the shape's {g.shape.get('layers')}",
                "experts": f"{rival.experts} experts is further from the shape's {g.shape.get('experts')}",
                "top_k": f"top-{rival.top_k} is further from the shape's top-{g.shape.get('top_k')}",
                "shared_experts": f"{rival.shared} shared experts where the shape asks for {g.shape.get('shared_experts')}",
                "dense_layers": f"{rival.dense} dense layers where the shape asks for {g.shape.get('dense_layers')}",
                "arch": f"{best.arch} is the source's nearer family",
            }[key])
        return "; ".join(reasons) or "scores the same and ranks later"


def _human(count: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def check_goal(growth, choice: dict) -> dict:
    """The planner's exact count must be the solver's closed form: a mismatch is a bug, never shipped silently."""
    counted = choice.pop("counted")
    exact = [growth.total_params, growth.active_params]
    if exact != counted:
        raise RuntimeError(f"internal error: the goal solver counted {counted} parameters, the plan has {exact}")
    return choice


def solve_goal(ckpt: Checkpoint, goal: Goal) -> tuple[Target, dict]:
    """The concrete growth Target that best meets `goal` from `ckpt`, and why it was chosen."""
    return Solver(ckpt, goal).solve()


def load_target(spec: str | os.PathLike | dict | Target, overrides: dict | None = None):
    """A Target (or a Goal, for total_params/active_params targets) from a preset name, a YAML path,
    a dict or a Target; `overrides` win (None values ignored)."""
    if isinstance(spec, Target):
        data, name = {k: v for k, v in spec.as_dict().items() if k != "name"}, spec.name
    elif isinstance(spec, dict):
        data, name = dict(spec), "custom"
    else:
        data, name = named_target(str(spec))
    if not isinstance(data, dict):
        raise UserError(f"target {name} must be a YAML mapping of keys such as width, ffn, layers, noise; "
                        f"it is a {type(data).__name__}")
    if overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    data = {k: v for k, v in data.items() if v is not None}
    if any(key in data for key in GOAL_MARKERS):
        fixed = sorted(k for k in ("width", "ffn", "layers", "insert_after", "moe") if k in data)
        if fixed:
            raise UserError(f"goal {name} chooses width, ffn, layers and experts itself: drop {', '.join(fixed)} (or write a plain target)")
        if "total_params" not in data:
            raise UserError(f"goal {name} gives active_params but no total_params: a goal needs both sizes, or total_params alone")
        return goal_from_dict(data, name)
    return target_from_dict(data, name)
