"""MuonClip: matches torch.optim.Muon, orthogonalises per expert, round-trips its state; QK-Clip
brings every head's max logit to tau in one step; WSD schedule shapes."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from hyperclone.arch import FAMILIES
from hyperclone.testing import randomize_, tiny_config
from hyperclone.train.optim import MuonClip, build_optimizer, newton_schulz
from hyperclone.train.qkclip import QKClip
from hyperclone.train.schedule import lr_factor


def test_one_step_matches_torch_muon():
    torch.manual_seed(0)
    w0 = torch.randn(48, 32)
    grads = [torch.randn(48, 32) for _ in range(3)]
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_ours = MuonClip([dict(params=[ours], use_muon=True)], lr=0.02, weight_decay=0.1)
    opt_ref = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for g in grads:  # three steps: momentum and Nesterov included
        ours.grad, ref.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    # relative to the update three steps made (the same iteration: equal up to rounding)
    assert (ours - ref).abs().max() <= 1e-5 * (ref - w0).abs().max()


def test_orthogonalised_update_has_singular_values_in_a_band():
    torch.manual_seed(0)
    g = torch.randn(64, 40) * torch.logspace(-2, 0, 40)  # condition number ~200
    s_raw = torch.linalg.svdvals(g)
    assert s_raw.max() / s_raw.min() > 100
    s = torch.linalg.svdvals(newton_schulz(g).float())
    assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic's band (it trades exactness for speed)


def test_experts_are_orthogonalised_one_by_one():
    stack = torch.randn(4, 24, 16)
    batched = newton_schulz(stack)
    for e in range(4):
        single = newton_schulz(stack[e]).float()
        # bf16 iterations: a stacked matmul may round differently from a single one, so within a
        # few bf16 steps of the result's own scale
        assert torch.allclose(batched[e].float(), single, rtol=0, atol=2e-2 * float(single.abs().max()))


def _per_parameter_step(params: list, groups: list[dict], buffers: dict) -> None:
    """The reference: Muon one parameter (or fused half, or fused projection's q, k, v) at a time, Newton–Schulz
    in float32, each matrix at its own AdamW-matched scale."""
    for group in groups:
        for p in group["params"]:
            buf = buffers.setdefault(id(p), torch.zeros_like(p.grad))
            buf.lerp_(p.grad, 1 - 0.95)
            update = p.grad.lerp(buf, 0.95)
            qkv = group.get("qkv")
            if qkv and qkv[0] == "per_head":  # [heads, (q k v), head_dim] rows: q, k, v gathered, then put back
                heads = qkv[1]
                rows = update.view(heads, 3, -1, update.shape[-1])
                for j in range(3):
                    part = rows[:, j].reshape(-1, update.shape[-1])
                    done = newton_schulz(part, dtype=torch.float32) * group["lr"] * 0.2 * math.sqrt(max(part.shape))
                    rows[:, j] = done.view(heads, -1, update.shape[-1])
                step = update
            else:
                if qkv:  # [q; k; v] rows
                    heads, kv_heads = qkv[1], qkv[2]
                    dim = update.shape[0] // (heads + 2 * kv_heads)
                    mats = update.split([heads * dim, kv_heads * dim, kv_heads * dim])
                else:
                    mats = update.chunk(2, dim=-2) if group.get("halves") else (update,)
                step = torch.cat([newton_schulz(m, dtype=torch.float32) * group["lr"] * 0.2 * math.sqrt(max(m.shape[-2:]))
                                  for m in mats], dim=-2)
            with torch.no_grad():
                p.mul_(1 - group["lr"] * 0.1)
                p.sub_(step)


@pytest.mark.parametrize("family", ["qwen3_moe", "llama", "phi3", "gpt_neox"])
def test_batched_newton_schulz_step_equals_the_per_parameter_step(family):
    """All same-shape matrices of the model (experts of every layer, q_proj of every layer...) in one
    Newton–Schulz call per shape gives the per-parameter update, to 1e-4 of the step in float32 — fused projections
    included: phi3's stacked [q; k; v] (grouped-query, so q and k differ in shape) and gpt_neox's per-head
    rows are orthogonalised as three matrices, like a family's separate q_proj, k_proj and v_proj."""
    model = AutoModelForCausalLM.from_config(tiny_config(family, num_hidden_layers=3))
    randomize_(model, seed=1)
    opt = build_optimizer(model, "muon", lr=1e-2, expert_lr_scale=0.5)
    opt.ns_dtype = torch.float32
    muon_groups = [g for g in opt.param_groups if g["use_muon"]]
    params = [p for g in muon_groups for p in g["params"]]
    shapes = [m.shape[-2:] for g in muon_groups for p in g["params"] for m in (p.chunk(2, -2) if g["halves"] else (p,))]
    assert len(set(shapes)) < len(shapes)  # matrices do share shapes: the batching is exercised
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    ref_groups = [dict(params=reference[sum(len(h["params"]) for h in muon_groups[:k]):][:len(g["params"])], lr=g["lr"],
                       halves=g["halves"], qkv=g["qkv"]) for k, g in enumerate(muon_groups)]
    assert any(g["qkv"] for g in muon_groups) == (family in ("phi3", "gpt_neox"))
    buffers: dict = {}
    start = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # two steps: the momentum buffers are exercised too
        for p, r in zip(params, reference):
            p.grad = torch.randn(p.shape, generator=gen)
            r.grad = p.grad.clone()
        opt.step()
        _per_parameter_step(reference, ref_groups, buffers)
    for p, r, p0 in zip(params, reference, start):  # relative to the step taken: float32 rounding, whatever the kernels' order
        assert (p - r).abs().max() <= 1e-4 * (r - p0).abs().max(), ((p - r).abs().max(), (r - p0).abs().max())


def test_fused_gate_up_halves_and_parameter_split():
    model = AutoModelForCausalLM.from_config(tiny_config("qwen3_moe"))
    opt = build_optimizer(model, "muon", lr=1e-3)
    halves = [g for g in opt.param_groups if g["halves"]]
    assert halves and all(p.dim() == 3 for g in halves for p in g["params"])
    adam = {id(p) for g in opt.param_groups if not g["use_muon"] for p in g["params"]}
    assert id(model.model.embed_tokens.weight) in adam and id(model.model.layers[1].mlp.gate.weight) in adam
    assert id(model.model.layers[0].self_attn.q_proj.weight) not in adam


def test_state_dict_round_trips():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    opt = build_optimizer(model, "muon", lr=1e-3)
    ids = torch.randint(0, 128, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    again = build_optimizer(model, "muon", lr=1e-3)
    again.load_state_dict(opt.state_dict())
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key in a["state"]:
        for name, value in a["state"][key].items():
            assert torch.equal(value, b["state"][key][name])


@pytest.mark.parametrize("family,extra", [("llama", {}), ("deepseek_v3", {}), ("deepseek_v3", {"q_lora_rank": None})])
def test_qk_clip_brings_every_head_to_tau(family, extra):
    model = AutoModelForCausalLM.from_config(tiny_config(family, **extra))
    randomize_(model, 0)
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            (attn.q_b_proj if getattr(attn, "q_b_proj", None) is not None else attn.q_proj).weight.mul_(30)
    tau = 5.0
    clip = QKClip(model, tau=tau)
    opt = build_optimizer(model, "muonclip", lr=0.0, qk_clip=clip)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    before = clip.observed_max()
    opt.step()
    with torch.no_grad():
        model(input_ids=ids)
    per_head = [m._hc_max_logit for m in clip.modules]
    assert before > 10 * tau
    assert all(float(h.max()) <= tau * (1 + 1e-5) for h in per_head)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qk_clip_reaches_every_attention_layer_of_every_family(family):
    """Every decoder layer's attention is either clipped or, behind q/k norms, reported as left alone. After
    `apply` with tau below every head's max, each clipped layer's heads, fed the inputs they had (clipping a
    layer changes what the next one reads), are at or below tau and the lowest-gamma head of each kv group at
    it — through separate, stacked (phi3) and per-head interleaved (gpt_neox) projections, GQA and MLA."""
    config = tiny_config(family)
    if getattr(config, "clip_qkv", None):  # OLMo's clamp of q and k: scaling rows is exact only below it
        config.clip_qkv = None
    model = AutoModelForCausalLM.from_config(config)
    randomize_(model, 0)
    model.eval()  # no dropout: the recorded inputs are what the layers see
    clip = QKClip(model, tau=1e9)
    assert len(clip.modules) + len(clip.skipped) == model.config.num_hidden_layers
    if not clip.modules:
        return  # every layer behind q/k norms (qwen3, olmo2, ...): nothing to clip, and said so by `skipped`
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    inputs = {}

    def remember(module, args, kwargs):
        inputs[module] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def replay(module, args, kwargs):
        return ((inputs[module], *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": inputs[module]})

    def maxima(hook) -> list[torch.Tensor]:
        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in clip.modules]
        with torch.no_grad():
            model(input_ids=ids)
        for h in handles:
            h.remove()
        return [m._hc_max_logit.clone() for m in clip.modules]

    clip.tau = 0.5 * float(torch.cat(maxima(remember)).min())
    assert clip.tau > 0
    clip.apply()  # on the maxima just recorded
    for head_max in maxima(replay):
        assert float(head_max.max()) == pytest.approx(clip.tau, rel=1e-4) and bool((head_max <= clip.tau * (1 + 1e-4)).all())


def test_wsd_shapes():
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup) == pytest.approx(0.1)
    assert lr_factor(50, total, warmup) == 1.0
    for shape in ("linear", "cosine", "1-sqrt"):
        values = [lr_factor(s, total, warmup, decay_shape=shape) for s in range(80, 100)]
        assert values == sorted(values, reverse=True) and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(99, total, warmup, decay_shape="exp", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(89, total, warmup, decay_shape="linear") == pytest.approx(0.5)
    assert lr_factor(89, total, warmup, decay_shape="1-sqrt") == pytest.approx(1 - math.sqrt(0.5))
    # branching a decay from step 40 of a stable phase
    assert lr_factor(39, total, warmup, decay_start=40) == 1.0
    assert lr_factor(99, total, warmup, decay_start=40) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(69, total, warmup, decay_start=40) == pytest.approx(0.5)


def assert_capture_changes_nothing(family: str, then=lambda: None) -> None:
    """A `family` model computes the same logits with QK-Clip's attention function attached (after `then`,
    which may turn kernels on) as transformers builds it."""
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    randomize_(model, 0)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        QKClip(model, tau=100.0)
        then()
        captured = model(input_ids=ids).logits
    assert (captured - plain).abs().max() <= 1e-5 * plain.abs().max(), family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_max_logit_capture_leaves_the_model_computing_the_same(family):
    """QK-Clip swaps in its attention function: with it attached, every family's logits are those of the
    model as transformers builds it (soft-capping, sinks, sliding windows and all)."""
    assert_capture_changes_nothing(family)
