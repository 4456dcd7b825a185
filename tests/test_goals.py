"""Goal targets: the solver meets parameter budgets, and transformers agrees with its counts."""
import json

import pytest
import torch
from tests.conftest import assert_preserved
from tests.test_cli import run

import hyperclone
from hyperclone.arch import FAMILIES, MOE_LAYOUTS, family_for
from hyperclone.goals import ACTIVE_TOLERANCE, TOTAL_TOLERANCE

PRESETS = ["1t-moe", "hunyuan-large", "moe-30b-a3b"]
# A qwen3_moe source with many small experts: a MoE source keeps its routed/active ratio (E/k), so
# a 1T/32B goal needs E/k above ~32. The default tiny one (4 experts, top-2) is the unreachable case.
FINE_MOE = dict(num_experts=64, num_experts_per_tok=1, moe_intermediate_size=4)
SOURCES = {"llama": {}, "qwen3": {}, "qwen3_moe": FINE_MOE}


def meta_counts(config: dict) -> tuple[int, int]:
    """(total, active) of the model transformers builds from `config`, on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    total = sum(p.numel() for p in model.parameters())
    layout = MOE_LAYOUTS.get(model.config.model_type)
    inactive = 0
    if layout:
        experts = next(getattr(model.config, k) for k in layout.experts_keys() if getattr(model.config, k, None))
        top_k = getattr(model.config, layout.topk_field)
        for name, module in model.named_modules():
            if name.endswith(layout.memory_experts):
                inactive += sum(p.numel() for p in module.parameters()) * (experts - top_k) // experts
    return total, total - inactive


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", list(SOURCES))
def test_presets_are_met_and_transformers_counts_agree(family, preset, tiny):
    src = tiny(family, dtype=torch.bfloat16, **SOURCES[family])
    growth = hyperclone.plan(src, preset)
    goal = growth.goal["goal"]
    assert abs(growth.total_params / goal["total_params"] - 1) <= TOTAL_TOLERANCE
    assert abs(growth.active_params / goal["active_params"] - 1) <= ACTIVE_TOLERANCE
    assert meta_counts(growth.config) == (growth.total_params, growth.active_params)
    assert growth.goal["chosen"] and growth.goal["rejected"]
    assert not growth.warnings  # half precision: only exact (power-of-two) expert scales are chosen


def test_plan_json_of_1t_moe_has_the_contract_and_output_figures(tiny):
    src = tiny("llama", dtype=torch.bfloat16)
    result = run("plan", str(src), "--to", "1t-moe", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert 0.9e12 < summary["total_params"] < 1.2e12 and 27e9 < summary["active_params"] < 37e9
    assert meta_counts(summary["config"]) == (summary["total_params"], summary["active_params"])
    assert summary["config"]["n_routed_experts"] == 384 and summary["config"]["first_k_dense_replace"] == 1
    assert summary["bytes"] == 2 * (summary["total_params"] + 60 * 384)  # bf16, with the routers' bias buffers
    assert -(-summary["bytes"] // 5_000_000_000) <= summary["shards"] <= summary["bytes"] // 4_000_000_000
    assert summary["bytes"] < summary["free_bytes_needed"] < summary["bytes"] * 1.001


def test_unreachable_goal_is_one_line_with_the_nearest_sizes(tiny):
    src = tiny("qwen3_moe", dtype=torch.bfloat16)  # 4 experts top-2: active is always about half the total
    result = run("plan", str(src), "--to", "1t-moe")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and "nearest reachable" in lines[0], result.stderr


def test_constraints_are_hard(tiny, tmp_path):
    src = tiny("llama", dtype=torch.bfloat16)
    goal = {"total_params": "1.04T", "active_params": "32B", "shape": {"hidden": 7168, "shared_experts": 1},
            "constraints": {"arch": "mixtral", "max_width": 150}}
    growth = hyperclone.plan(src, goal)
    assert growth.config["model_type"] == "mixtral" and growth.target.width <= 150
    moe = tiny("qwen3_moe", dtype=torch.bfloat16)  # 4 experts top-2: experts can only be 4 x clone x split
    assert hyperclone.plan(moe, {"total_params": "2M", "constraints": {"experts": 8}}).moe["experts"] == 8
    with pytest.raises(hyperclone.UserError, match="not reachable"):
        hyperclone.plan(moe, {"total_params": "2M", "constraints": {"experts": 6}})
    bad = tmp_path / "bad.yaml"
    for text, message in [("total_params: 12Q\n", "parameter count"), ("total_params: 1B\nwidth: 2\n", "drop width"),
                          ("total_params: 1B\nconstraints: {arch: llama}\n", "not a MoE family"),
                          ("active_params: 1B\n", "no total_params")]:
        bad.write_text(text)
        result = run("plan", str(src), "--to", str(bad))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("family,goal", [
    ("llama", {"total_params": "400K", "active_params": "150K", "shape": {"experts": 8, "top_k": 2, "layers": 3}}),
    ("qwen3", {"total_params": "300K"}),
    ("qwen3_moe", {"total_params": "400K", "active_params": "250K"}),
])
def test_a_solved_goal_grows_and_preserves_the_function(family, goal, tiny, tmp_path):
    src = tiny(family)
    out = hyperclone.grow(src, goal, tmp_path / "grown", progress=False)
    plan = json.loads((out / "growth.json").read_text())
    assert abs(plan["total_params"] / hyperclone.goals.parse_count("t", goal["total_params"]) - 1) <= TOTAL_TOLERANCE
    assert_preserved(hyperclone.verify(src, out))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_counted_in_closed_form(family, tiny):
    """The solver's closed form equals the plan's count (check_goal raises otherwise), and the plan's
    count equals what transformers builds — for every entry of the family table."""
    src = tiny(family)
    info = hyperclone.inspect(src)
    source_config = json.loads((src / "config.json").read_text())
    assert meta_counts(source_config) == (info["parameters"], info.get("active_parameters", info["parameters"]))
    total = info["parameters"]
    goals = [dict(total_params=8 * total)]
    if family_for(family).upcycle_to:  # dense -> MoE: the experts are counted too
        goals.append(dict(total_params=24 * total, active_params=6 * total))
    for goal in goals:
        growth = hyperclone.plan(src, goal)
        assert meta_counts(growth.config) == (growth.total_params, growth.active_params)
