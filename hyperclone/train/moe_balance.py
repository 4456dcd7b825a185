"""MoE training: load balancing (auxiliary loss or DeepSeek's aux-loss-free bias), router z-loss,
per-expert token counts.

Forward hooks on each router (the family table's `memory_router`: `mlp.gate` in most families; every
transformers MoE router returns logits, weights and chosen experts) capture what one code path needs for
every MoE family.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

from hyperclone.arch import MOE_LAYOUTS
from hyperclone.errors import UserError
from hyperclone.moe import moe_spec


class MoeBalance:
    def __init__(self, model: torch.nn.Module, mode: str, aux_coef: float, z_coef: float, bias_rate: float):
        config = model.config.to_dict()
        layout = MOE_LAYOUTS[config["model_type"]]
        self.spec = moe_spec(config, layout, config["num_hidden_layers"])
        self.sigmoid = layout.scoring == "sigmoid"
        self.routers: dict[int, torch.nn.Module] = {}
        router = re.compile(rf"layers\.(\d+)\.{re.escape(layout.memory_router)}$")
        for name, module in model.named_modules():
            if (m := router.search(name)) and not isinstance(module, torch.nn.Linear):
                self.routers[int(m.group(1))] = module
                module.register_forward_hook(self._hook(int(m.group(1))))
        if not self.routers:  # the family table names a router module this model does not have
            raise UserError(f"internal error: no {layout.memory_router} router in this {config['model_type']} model")
        has_bias = all(hasattr(r, "e_score_correction_bias") for r in self.routers.values())
        if mode == "auto":
            mode = "aux_free" if has_bias else "aux"
        if mode == "aux_free" and not has_bias:
            raise ValueError("aux_free balancing needs routers with an e_score_correction_bias (glm4_moe, deepseek_v3)")
        self.mode, self.aux_coef, self.z_coef, self.bias_rate = mode, aux_coef, z_coef, bias_rate
        self.layers = sorted(self.routers)
        self.step_counts = torch.zeros(len(self.layers), self.spec.experts)
        self.total_counts = torch.zeros(len(self.layers), self.spec.experts)
        self._losses: list[torch.Tensor] = []
        self._recording = False

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Around a training forward: only it counts tokens and adds balancing losses. Not an eval pass,
        nor the forward that activation checkpointing runs again during backward (which must still build
        the same graph, so the losses are computed there too and dropped)."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not module.training:
                return
            logits, indices = output[0], output[-1]
            counts = torch.bincount(indices.reshape(-1), minlength=self.spec.experts).float().cpu()
            loss = logits.new_zeros(())
            if self.z_coef:
                loss = loss + self.z_coef * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
            if self.mode == "aux" and self.aux_coef:
                probs = torch.sigmoid(logits.float()) if self.sigmoid else torch.softmax(logits.float(), dim=-1)
                probs = probs / probs.sum(-1, keepdim=True)
                fraction = counts.to(logits.device) / counts.sum().clamp(min=1)
                loss = loss + self.aux_coef * self.spec.experts * (fraction * probs.mean(0)).sum()
            if self._recording:
                self.step_counts[self.layers.index(layer)] += counts
                self._losses.append(loss)

        return hook

    def take_loss(self) -> torch.Tensor | None:
        """The balancing and z losses of the forward passes since the last call."""
        if not self._losses:
            return None
        loss = torch.stack(self._losses).sum()
        self._losses.clear()
        return loss

    @torch.no_grad()
    def end_step(self, reduce) -> list[list[float]]:
        """After an optimizer step: all-reduce counts, nudge biases (aux-free), return this step's load."""
        counts = reduce(self.step_counts.clone())
        self.total_counts += counts
        if self.mode == "aux_free":
            for row, layer in enumerate(self.layers):
                bias = self.routers[layer].e_score_correction_bias
                load = counts[row].to(bias.device)
                bias.add_(self.bias_rate * torch.sign(load.mean() - load).to(bias.dtype))
        self.step_counts.zero_()
        return counts.tolist()
