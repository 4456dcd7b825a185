"""Verification of models larger than memory: transformers' own model, one decoder layer in memory at a time.

The model is built by transformers on the meta device, so its forward pass (embedding scale, masks,
rotary tables, every decoder layer, final norm, soft-capping) is transformers' code, untouched.
Only the weights are streamed: a hook loads a decoder layer from the safetensors files just before
it runs and frees it just after. For MoE layers too large for the memory budget, the experts
module is swapped for one holding only the experts the router picked for the sample tokens.
The residual stream after every source layer is compared with the grown model's (n stacked copies).
"""
from __future__ import annotations

import copy
import json
import math

import torch

from hyperclone.arch import MOE_LAYOUTS, MoeLayout, family_for
from hyperclone.errors import UserError
from hyperclone.io.reader import Checkpoint
from hyperclone.memory import available_memory, release_freed_memory
from hyperclone.moe import expand_fused_experts, fused_from_experts



class StreamedModel:
    """A transformers causal LM whose decoder layers live on disk until they run."""

    def __init__(self, ckpt: Checkpoint, memory_budget: int | None = None, experts: str = "auto"):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.ckpt = ckpt
        config = dict(ckpt.config)
        self.fam = family_for(config["model_type"])
        self.layout: MoeLayout | None = MOE_LAYOUTS.get(self.fam.model_type)
        if self.layout:
            expand_fused_experts(ckpt, self.layout, self.fam.layer_prefix)
        options = dict(attn_implementation="eager", dtype=torch.float32)  # verify always computes in float32
        if self.layout:
            options["experts_implementation"] = "eager"
        self.config = AutoConfig.for_model(config.pop("model_type"), **config)
        self.config.use_cache = False
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, **options)
        self.model.eval()
        self._materialise_outside_layers(options)
        self.budget = memory_budget if memory_budget is not None else available_memory() // 4
        self.experts_mode = experts
        self.picked_layers: list[int] = []
        self._bytes_by_layer: dict[int, int] | None = None
        self.layers = self._layer_list()
        for j, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(self._loader(j))
            layer.register_forward_hook(self._unloader(j))

    # ----- outside the decoder layers: small, built on CPU by transformers ----------------------
    def _layer_list(self) -> torch.nn.ModuleList:
        prefix = self.fam.layer_prefix.rstrip(".")
        return self.model.get_submodule(prefix)

    def _materialise_outside_layers(self, options: dict) -> None:
        """Embeddings, final norm, rotary tables and lm_head: from a 0-layer twin built on CPU, weights from disk."""
        from transformers import AutoModelForCausalLM

        # No layers, but the layer types kept: rotary tables per layer type (olmo3, gemma3) are built from them.
        # Set after construction, which transformers does not check against the layer count.
        twin_config = copy.deepcopy(self.config)
        twin_config.num_hidden_layers = 0
        twin = AutoModelForCausalLM.from_config(twin_config, **options)
        layers = self.fam.layer_prefix.rstrip(".")
        for name, module in list(twin.named_modules()):
            if not name or name == layers or name.startswith(layers + ".") or list(module.children()):
                continue
            parent, _, leaf = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, module)
        if self.config.tie_word_embeddings:
            self.model.tie_weights()
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                if name.startswith(layers + ".") or tensor.is_meta:
                    continue
                if (disk := self._disk_name(name)) is not None:
                    tensor.copy_(self._read(disk))
                elif not (self.config.tie_word_embeddings and name == f"{self.fam.lm_head}.weight"):
                    if any(name == b for b, _ in self.model.named_buffers()):
                        continue  # computed buffers (rotary tables) come from the CPU twin
                    raise UserError(f"{self.ckpt.path} has no {name}: the checkpoint is incomplete")
        leftover = [n for n, p in self.model.named_parameters() if p.is_meta and not n.startswith(layers + ".")]
        if leftover:
            raise UserError(f"internal error: {leftover[0]} was not materialised")

    def _read(self, name: str) -> torch.Tensor:
        info = self.ckpt.tensors[name]
        return self.ckpt.rows(name, 0, info.shape[0]).reshape(info.shape).to(torch.float32)

    # ----- decoder layers: loaded just before they run -----------------------------------------
    def _disk_name(self, name: str, layer: int | None = None) -> str | None:
        """The on-disk name of an in-memory parameter (whole-model name, or relative to `layer`)."""
        whole = name if layer is None else f"{self.fam.layer_prefix}{layer}.{name}"
        renames = self.layout.renames if self.layout and layer is not None else ()
        return next((d for d in self.fam.disk_names(whole, renames) if d in self.ckpt.tensors), None)

    def _expert_tensor(self, j: int, rel: str, experts: list[int]) -> torch.Tensor:
        return fused_from_experts(self.ckpt, self.layout, self.fam.layer_prefix, j, rel, experts, self._read)

    def _layer_bytes(self, j: int) -> int:
        """Float32 bytes of decoder layer j, from one pass over the tensor headers."""
        if self._bytes_by_layer is None:
            self._bytes_by_layer = {}
            for name, info in self.ckpt.tensors.items():
                index = name[len(self.fam.layer_prefix):].partition(".")[0] if name.startswith(self.fam.layer_prefix) else ""
                if index.isdigit():
                    self._bytes_by_layer[int(index)] = self._bytes_by_layer.get(int(index), 0) + 4 * math.prod(info.shape)
        return self._bytes_by_layer.get(j, 0)

    def _load(self, module: torch.nn.Module, j: int, skip: str = "", experts: list[int] | None = None) -> None:
        """Give every parameter and persistent buffer of `module` (part of layer j) its float32 value from disk."""
        with torch.no_grad():
            for rel, tensor in module.state_dict(keep_vars=True).items():
                full = skip + rel
                if experts is not None or (full.startswith(f"{self._experts}.") and self._disk_name(full, j) is None):
                    value = self._expert_tensor(j, full, experts if experts is not None else list(range(tensor.shape[0])))
                else:
                    disk = self._disk_name(full, j)
                    if disk is None:
                        raise UserError(f"{self.ckpt.path} has no tensor for {self.fam.layer_prefix}{j}.{full}")
                    value = self._read(disk)
                if tuple(value.shape) != tuple(tensor.shape):
                    raise UserError(f"{self.fam.layer_prefix}{j}.{full} has shape {list(value.shape)} on disk, "
                                    f"transformers expects {list(tensor.shape)}: config.json does not match the weights")
                owner, _, leaf = rel.rpartition(".")
                holder = module.get_submodule(owner) if owner else module
                if leaf in holder._parameters:
                    holder._parameters[leaf] = torch.nn.Parameter(value.to(tensor.dtype), requires_grad=False)
                else:
                    holder._buffers[leaf] = value.to(tensor.dtype)
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:
            raise UserError(f"internal error: {self.fam.layer_prefix}{j}.{skip}{left[0]} has no value on disk")

    def _loader(self, j: int):
        def hook(layer, args):
            picked = self.layout is not None and self._has_experts(layer) and (
                self.experts_mode == "picked" or (self.experts_mode == "auto" and self._layer_bytes(j) > self.budget))
            if picked:
                self.picked_layers.append(j)
                experts = layer.get_submodule(self._experts)
                parent = layer.get_submodule(self._experts.rpartition(".")[0])
                parent.experts = PickedExperts(experts, lambda ids: self._picked(experts, j, ids))
            self._load(layer, j)
        return hook

    def _unloader(self, j: int):
        def hook(layer, args, output):
            if self._has_experts(layer) and isinstance(layer.get_submodule(self._experts), PickedExperts):
                parent = layer.get_submodule(self._experts.rpartition(".")[0])
                parent.experts = layer.get_submodule(self._experts).original[0]
            layer.to_empty(device="meta")  # frees the layer's memory
            release_freed_memory()
        return hook

    @property
    def _experts(self) -> str:
        """Where transformers 5 keeps a MoE layer's fused experts in memory."""
        return self.layout.memory_experts if self.layout else ""

    def _has_experts(self, layer) -> bool:
        if not self.layout:
            return False
        try:
            layer.get_submodule(self._experts)
            return True
        except AttributeError:
            return False

    def _picked(self, meta_experts: torch.nn.Module, j: int, ids: list[int]) -> torch.nn.Module:
        config = self.config.__class__.from_dict(self.config.to_dict())
        for key in self.layout.experts_keys():
            setattr(config, key, len(ids))
        config._experts_implementation = "eager"
        with torch.device("meta"):
            compact = type(meta_experts)(config)
        self._load(compact, j, skip=f"{self._experts}.", experts=ids)
        return compact

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Float32 logits, and the residual stream after every decoder layer."""
        residuals: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(lambda m, a, out: residuals.append((out[0] if isinstance(out, tuple) else out).detach().clone()))
                   for layer in self.layers]
        try:
            with torch.no_grad():
                logits = self.model(input_ids=tokens).logits.float()
        except RuntimeError as exc:
            raise UserError(f"transformers failed to run {self.ckpt.path}: {str(exc).splitlines()[0]}") from None
        finally:
            for h in handles:
                h.remove()
        return logits, residuals


class PickedExperts(torch.nn.Module):
    """Stands in for a MoE layer's experts: loads only the experts the router chose, then runs them."""

    def __init__(self, original: torch.nn.Module, load):
        super().__init__()
        self.original = [original]  # a list, so the meta module stays out of this module's tree
        self.load = load

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        ids = sorted(int(i) for i in top_k_index.unique())
        remap = torch.full((int(top_k_index.max()) + 1,), -1, dtype=top_k_index.dtype)
        remap[torch.tensor(ids)] = torch.arange(len(ids), dtype=top_k_index.dtype)
        return self.load(ids)(hidden_states, remap[top_k_index], top_k_weights)


def _layer_map(grown: Checkpoint, source_layers: int, grown_layers: int) -> list[int]:
    manifest = grown.directory / "growth.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["layer_map"]
    if grown_layers == source_layers:
        return list(range(source_layers))
    raise UserError(f"{grown.path} has {grown_layers} layers and no growth.json saying which source layer each copies; "
                    "keep growth.json beside the weights")


def streamed_logits(small: Checkpoint, big: Checkpoint, tokens: torch.Tensor, memory_budget: int | None = None,
                    experts: str = "auto") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Both models' float32 logits, one layer in memory at a time, and the figures of the streamed check:
    the residual difference after every source layer and the layers whose experts were loaded as picked."""
    grown_model = StreamedModel(big, memory_budget, experts)
    grown_logits, grown_res = grown_model.forward(tokens)
    grown_params = sum(p.numel() for p in grown_model.model.parameters())
    source_model = StreamedModel(small, memory_budget, experts)
    source_logits, source_res = source_model.forward(tokens)
    source_params = sum(p.numel() for p in source_model.model.parameters())
    layer_map = _layer_map(big, len(source_res), len(grown_res))
    last = {i: j for j, i in enumerate(layer_map)}  # the grown layer after which source layer i's output stands
    width = big.config["hidden_size"] // small.config["hidden_size"]
    residual = [float((grown_res[last[i]] - source_res[i].repeat(1, 1, width)).abs().max()) for i in range(len(source_res))]
    return source_logits, grown_logits, dict(source_params=source_params, grown_params=grown_params,
                                             residual_max_abs_diff=residual, picked_expert_layers=grown_model.picked_layers)
