"""MuonClip: Muon for hidden matrices, AdamW for the rest, QK-Clip after each step (Kimi K2).

Muon orthogonalises the momentum of every hidden 2D matrix with a quintic Newton–Schulz iteration;
MoE experts stored as 3D tensors [E, out, in] are orthogonalised per expert in one batched pass
(fused gate_up halves separately, and a fused attention projection's q, k and v apart). The update's
RMS is matched to AdamW's (0.2·sqrt(max(A, B))), so one learning rate serves every matrix.
`newton_schulz` is the function a fused kernel replaces.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable

import torch
import torch.distributed as dist

try:  # FSDP2's sharded parameters
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed: nothing is ever sharded
    DTensor, distribute_tensor = (), None

from hyperclone.arch import FAMILIES, fused_qkv_rows
from hyperclone.kernels import use_kernels
from hyperclone.kernels.gram import gram_triton

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# batch·M²·K below which cuBLAS beats the one-triangle kernel on an H100 (benchmarks/results/kernels-gpu.md:
# through the kernel 2048² ran at 0.43-0.5x, [32, 1024, 1024] at 0.97-1.04x, 4096² at 1.13-1.3x)
KERNEL_MIN_WORK = 2 ** 36
ROUTER = re.compile(r"(^|\.)(gate(\.wg)?|shared_expert_gate)\.weight$")
FUSED_HALVES = re.compile(r"gate_up_proj$")


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16, kernel: bool | None = None) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of `g` (batched over leading dims).

    Same iteration and operation order as torch.optim.Muon (bfloat16 by default), so 2D results match it.
    `kernel`: the Triton products or torch's; None chooses (CUDA, and enough work to pay, see KERNEL_MIN_WORK).
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    # one batched code path for a matrix and a stack; on CUDA the two symmetric products (X·Xᵀ and
    # b·G + c·G·G) go through the one-triangle Triton kernel, elsewhere through torch
    x3 = x.reshape(-1, *x.shape[-2:])
    if kernel is None:
        kernel = use_kernels(x) and x3.shape[0] * x3.shape[1] ** 2 * x3.shape[2] >= KERNEL_MIN_WORK
    for _ in range(steps):
        if kernel:
            gram = gram_triton(x3)
            poly = gram_triton(gram, gram, alpha=c, beta=b)
        else:
            gram = x3 @ x3.mT
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x3 = torch.baddbmm(x3, poly, x3, beta=a)
    x = x3.reshape(x.shape)
    if tall:
        x = x.mT
    return x.to(g.dtype)


def shard_like(whole: torch.Tensor, param: DTensor) -> DTensor:
    """`whole`, which every rank holds, cut into `param`'s sharding: each rank keeps its own slice, nothing is sent."""
    return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)


def _spread(stack: torch.Tensor, orthogonalise: Callable, group) -> torch.Tensor:
    """`orthogonalise(stack)`, the matrices spread over the ranks of `group` (Moonlight's distributed Muon):
    each rank runs Newton–Schulz on its share of the stack, then all ranks gather every result. Each
    matrix is still orthogonalised whole and by one rank, so the update is the single-process one."""
    if group is None or dist.get_world_size(group) == 1:
        return orthogonalise(stack)
    world, rank, count = dist.get_world_size(group), dist.get_rank(group), stack.shape[0]
    share = -(-count // world)
    padded = torch.cat([stack, stack.new_zeros(share * world - count, *stack.shape[1:])])  # zeros stay zeros
    mine = orthogonalise(padded[rank * share:(rank + 1) * share]).contiguous()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    return torch.cat(parts)[:count]


def rms_matched_lr(lr: float, shape: torch.Size) -> float:
    """AdamW-matched update RMS for an [A, B] matrix: lr * 0.2 * sqrt(max(A, B))."""
    return lr * 0.2 * math.sqrt(max(shape[-2], shape[-1]))


class MuonClip(torch.optim.Optimizer):
    """Muon + AdamW in one torch optimizer; groups say which with `use_muon`. QK-Clip runs after `step`
    when a `QKClip` is attached (see hyperclone.train.qkclip); without it this is plain Muon + AdamW."""

    def __init__(self, params: Iterable, lr: float = 2e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                 betas: tuple[float, float] = (0.9, 0.95), adam_eps: float = 1e-8, qk_clip=None,
                 ns_dtype: torch.dtype = torch.bfloat16):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, betas=tuple(betas), adam_eps=adam_eps,
                        use_muon=True, halves=False, qkv=None)
        super().__init__(params, defaults)
        self.qk_clip = qk_clip
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon_all([g for g in self.param_groups if g["use_muon"]])
        for group in self.param_groups:
            if not group["use_muon"]:
                for p in group["params"]:
                    if p.grad is not None:
                        self._adamw(p, group)
        if self.qk_clip is not None:
            self.qk_clip.apply()
        return loss

    def _muon_all(self, groups: list[dict]) -> None:
        """Muon for every matrix of every Muon group, with one batched Newton–Schulz call per matrix shape:
        all experts of all layers, all q_proj of all layers... are orthogonalised together, so the step has
        no loop over parameters around the iteration (on a GPU, one launch per shape instead of hundreds)."""
        items = []  # (param, group, its matrices: the update, or a fused [gate; up]'s two halves)
        mesh_group = None  # sharded (FSDP2) parameters: the process group their shards live on
        for group in groups:
            for p in group["params"]:
                if p.grad is not None:
                    update = self._momentum(p, group)
                    if isinstance(update, DTensor):  # orthogonalised whole, never shard by shard
                        mesh_group = mesh_group or update.device_mesh.get_group()
                        update = update.full_tensor()
                    items.append((p, group, _parts(update, group)))
        stacks: dict[tuple, list[torch.Tensor]] = {}
        for _, group, mats in items:
            for m in mats:
                stacks.setdefault(self._ns_key(m, group), []).append(m)
        done: dict[tuple, list[torch.Tensor]] = {}
        for key, mats in stacks.items():
            shape, steps, coefficients, eps = key
            stack = torch.cat([m.reshape(-1, *shape) for m in mats])
            flat = _spread(stack, lambda x: newton_schulz(x, steps, coefficients, eps, self.ns_dtype), mesh_group)
            done[key] = list(reversed(flat.split([m.numel() // math.prod(shape) for m in mats])))
        for p, group, mats in items:
            # each part at its own AdamW-matched scale, relative to the first's (1.0 where their shapes agree)
            scale = rms_matched_lr(group["lr"], mats[0].shape)
            parts = [done[self._ns_key(m, group)].pop().reshape(m.shape) for m in mats]
            parts = [u if m.shape == mats[0].shape else u * (rms_matched_lr(group["lr"], m.shape) / scale)
                     for u, m in zip(parts, mats)]
            update = _join(parts, group, p.shape)
            if isinstance(p, DTensor):
                update = shard_like(update, p)
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-scale)

    @staticmethod
    def _ns_key(m: torch.Tensor, group: dict) -> tuple:
        return tuple(m.shape[-2:]), group["ns_steps"], group["ns_coefficients"], group["eps"]

    def _momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Nesterov momentum of the gradient: what Newton–Schulz orthogonalises."""
        grad, state = p.grad, self.state[p]
        buf = state.setdefault("momentum_buffer", torch.zeros_like(grad))
        buf.lerp_(grad, 1 - group["momentum"])
        return grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        grad, state = p.grad, self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["adam_eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))


def _parts(update: torch.Tensor, group: dict) -> list[torch.Tensor]:
    """The matrices Newton–Schulz orthogonalises one by one: the update itself, a fused [gate; up]'s two
    halves, or a fused attention projection's q, k and v (orthogonalised apart, as Muon's author advises
    and as every family with separate projections gets them)."""
    if group["halves"]:
        return list(update.chunk(2, dim=-2))
    if group.get("qkv") is None:
        return [update]
    return [rows.reshape(-1, update.shape[-1]) for rows in fused_qkv_rows(update, *group["qkv"])]


def _join(parts: list[torch.Tensor], group: dict, shape: torch.Size) -> torch.Tensor:
    """`_parts` undone: the parameter's update from its orthogonalised parts."""
    if group.get("qkv") is None:
        return torch.cat(parts, dim=-2)
    update = torch.empty(shape, dtype=parts[0].dtype, device=parts[0].device)
    for rows, part in zip(fused_qkv_rows(update, *group["qkv"]), parts):
        rows.copy_(part.view(rows.shape))
    return update


def _fused_qkv(model: torch.nn.Module) -> tuple[str, tuple] | None:
    """(name suffix of the fused q/k/v weights, the `qkv` group option) for a family the table says fuses them."""
    config = model.config
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None or family.fused_qkv is None:
        return None
    heads = config.num_attention_heads
    kv_heads = heads if family.fused_qkv_layout == "per_head" else getattr(config, "num_key_value_heads", None) or heads
    return f"{family.fused_qkv}.weight", (family.fused_qkv_layout, heads, kv_heads)


def split_parameters(model: torch.nn.Module) -> tuple[list, list, list, list]:
    """(muon matrices, muon fused gate_up stacks, adamw decayed, adamw not decayed) of a transformers model.

    Muon: hidden 2D matrices and 3D expert stacks. AdamW: embeddings, lm_head, routers (decayed),
    norms and biases (not decayed).
    """
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    muon, halves, decay, no_decay = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            no_decay.append((name, p))
        elif id(p) in embeddings or ROUTER.search(name):
            decay.append((name, p))
        elif FUSED_HALVES.search(name):
            halves.append((name, p))
        else:
            muon.append((name, p))
    return muon, halves, decay, no_decay


def is_expert(name: str) -> bool:
    return ".experts." in name or name.endswith((".experts.gate_up_proj", ".experts.down_proj"))


def build_optimizer(model: torch.nn.Module, kind: str, lr: float, weight_decay: float = 0.1,
                    expert_lr_scale: float = 1.0, qk_clip=None) -> torch.optim.Optimizer:
    """`muonclip`, `muon` (no QK-Clip) or `adamw`. Routed experts' groups get lr * expert_lr_scale."""
    muon, halves, decay, no_decay = split_parameters(model)
    groups: list[dict] = []

    def add(params, **options):
        for expert in (False, True):
            chosen = [p for n, p in params if is_expert(n) == expert]
            if chosen:
                scale = expert_lr_scale if expert else 1.0
                groups.append(dict(params=chosen, lr=lr * scale, lr_scale=scale, **options))

    if kind == "adamw":
        add(muon + halves + decay, weight_decay=weight_decay)
        add(no_decay, weight_decay=0.0)
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    fused = _fused_qkv(model)
    if fused is not None:
        suffix, qkv = fused
        add([(n, p) for n, p in muon if n.endswith(suffix)], use_muon=True, qkv=qkv)
        muon = [(n, p) for n, p in muon if not n.endswith(suffix)]
    add(muon, use_muon=True)
    add(halves, use_muon=True, halves=True)
    add(decay, use_muon=False)
    add(no_decay, use_muon=False, weight_decay=0.0)
    return MuonClip(groups, lr=lr, weight_decay=weight_decay, qk_clip=qk_clip if kind == "muonclip" else None)
