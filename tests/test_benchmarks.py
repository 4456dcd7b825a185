"""The convergence benchmark runs end to end at a tiny budget, and its recorded sweeps render.

Its figures are measured, never asserted; what is checked is that a run completes, that every arm's
speedup is computed against its own random-init twin, and that a variant run (a subset of arms, another
data split) writes under its own name instead of over the default run's record."""
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_convergence_benchmark_runs_a_subset_of_arms_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = _benchmark("convergence.py", "--minutes", "1", "--arms", "random_init,hyperclone_noise", "--reserve", "20", "--out", str(out))
    assert "[hyperclone_noise] tune: lr" in done.stderr and "[random_init] tune: lr" in done.stderr  # arms in parallel, named
    stem = "convergence-reserve20-subset"
    assert {p.name for p in out.glob(f"{stem}*")} == {f"{stem}{s}" for s in (".json", ".md", ".png")}
    result = json.loads((out / f"{stem}.json").read_text())
    assert list(result["arms"]) == ["random_init", "hyperclone_noise"]
    grown = result["arms"]["hyperclone_noise"]
    assert grown["target_eval_loss"] == result["arms"]["random_init"]["final_eval_loss"]
    assert grown["start_eval_loss"] < result["arms"]["random_init"]["start_eval_loss"]  # growth keeps the small model's loss
    # the head start: where random init's curve comes down to the grown model's starting loss, and the speedup that alone gives
    twin = sorted((int(t), loss) for t, loss in result["arms"]["random_init"]["budget_eval_loss"].items())
    budget, head = twin[-1][0], grown["head_start_tokens"]
    if head is None:
        assert grown["start_eval_loss"] <= twin[-1][1] and grown["speedup_from_head_start"] is None
    else:
        assert 0 < head < budget and grown["speedup_from_head_start"] == budget / (budget - head)
        assert all(loss >= grown["start_eval_loss"] for t, loss in twin if t < head)
        assert next(loss for t, loss in twin if t >= head) <= grown["start_eval_loss"]
    # tuned at the whole budget: the arm's curve is its best grid point's, and that point is the best at the budget
    assert grown["final_eval_loss"] == min(grown["tuning_eval_loss"].values())
    assert grown["copies"]["pairs"] > 0 and -1 <= grown["copies"]["copies"] <= 1
    assert grown["copies_by_lr"][f"{grown['lr']:.3g}"] == grown["copies"]["copies"]  # and at every rate its tunnel tried
    assert len(grown["copies_by_lr"]) == len(grown["tuning_eval_loss"])
    assert "copies" not in result["arms"]["random_init"]
    # the small model is pretrained at the rate its own wind tunnel picks, and grown from that run
    small = result["small"]
    assert small["final_eval_loss"] == min(small["tuning_eval_loss"].values()) == small["tuning_eval_loss"][f"{small['lr']:.6g}"]
    assert len(small["tuning_eval_loss"]) >= 3
    # the forecast's account of an arm's work is what its tunnel trained: runs, steps and evals
    rows = [[json.loads(line) for line in m.read_text().splitlines()] for m in (out / "tune-hyperclone_noise").rglob("metrics.jsonl")]
    steps = sum(1 for run in rows for r in run if "tokens_per_s" in r)
    evals = sum(1 for run in rows for r in run if "eval_loss" in r)
    convergence = _convergence()
    assert (len(rows), steps, evals) == convergence._tunnel_work(result["large"]["tokens"]["wide"] // (result["scale"]["seq"] * result["scale"]["batch"]), convergence.BRANCHES,
                                                                 len(grown["tuning_eval_loss"]), every_budget=False, decay=grown["decay_fraction"])

    # the learning-rate resolution probe on the same run: each arm tuned again either side of its best rate,
    # then with a second seed at every rate next to its best
    probe = _benchmark("lr_resolution.py", str(out), "--seeds", "2")
    finer = json.loads(probe.stdout[probe.stdout.index("{"):])
    assert finer["factor2_speedup"] == grown["speedup"]
    for name, arm in finer["arms"].items():
        tried = {float(lr): loss for lr, loss in arm["final_eval_loss_by_lr"].items()}
        assert len(tried) >= len(result["arms"][name]["tuning_eval_loss"]) + 2  # the two midpoints, and past an edge
        assert arm["final_eval_loss"] == min(tried.values()) <= result["arms"][name]["final_eval_loss"]
    assert finer["arms"]["hyperclone_noise"]["target_eval_loss"] == finer["arms"]["random_init"]["final_eval_loss"]
    seeds = finer["seeds"]
    for name, arm in seeds["arms"].items():
        by_seed, mean = arm["final_eval_loss_by_lr_and_seed"], arm["mean_final_eval_loss_by_lr"]
        assert len(by_seed) >= 3 and all(len(losses) == 2 for losses in by_seed.values())
        for lr, losses in by_seed.items():
            assert mean[lr] == sum(losses) / 2
            if lr in finer["arms"][name]["final_eval_loss_by_lr"]:  # seed 0 is the run already made at that rate
                assert losses[0] == finer["arms"][name]["final_eval_loss_by_lr"][lr]
        chosen = f"{arm['lr']:.3g}"
        assert mean[chosen] == min(mean.values()) and chosen not in (min(mean, key=float), max(mean, key=float))  # inside
        assert arm["final_eval_loss"] == mean[chosen] and by_seed[chosen][0] != by_seed[chosen][1]  # seeds differ
    assert seeds["arms"]["hyperclone_noise"]["target_eval_loss"] == seeds["arms"]["random_init"]["final_eval_loss"]
    assert len(seeds["speedup_pairs"]) == 4

    # the recipe probe on the same run: each arm tuned again at every combination of the settings asked for and
    # the run's own (random init trains at weight decay 0.1, the grown arm at the after-growth recipe's 0), the
    # run's own combination read back rather than trained again. The second key only names the run's own
    # shape, so each arm trains one new combination and the suite stays short
    probe = _benchmark("recipe_probe.py", str(out), "--set", "weight_decay=0", "--set", "decay_shape=linear")
    found = json.loads(probe.stdout[probe.stdout.index("{"):])
    assert found["run_settings"] == {name: {"weight_decay": result["arms"][name]["weight_decay"], "decay_shape": "linear"}
                                     for name in ("random_init", "hyperclone_noise")}
    assert found["run_settings"]["random_init"]["weight_decay"] == 0.1 and found["run_settings"]["hyperclone_noise"]["weight_decay"] == 0
    for name, by in found["arms"].items():
        own = f"weight_decay={result['arms'][name]['weight_decay']:g},decay_shape=linear"
        assert set(by) == {f"weight_decay={d},decay_shape=linear" for d in ("0", "0.1")}
        assert by[own]["final_eval_loss"] == result["arms"][name]["final_eval_loss"]
        rate = f"{by[own]['lr']:.6g}"
        for combo, entry in by.items():
            assert entry["final_eval_loss"] == min(entry["final_eval_loss_by_lr"].values())
            if combo != own:  # the same rate in another combination trains to another loss: the settings reached the optimizer
                assert entry["final_eval_loss_by_lr"][rate] != result["arms"][name]["tuning_eval_loss"][rate]
                recipe = (out / f"probe-{combo.replace('=', '-').replace(',', '-')}-{name}" / "recipe.yaml").read_text()
                decay, shape = (part.split("=")[1] for part in combo.split(","))
                assert f"weight_decay: {float(decay)}" in recipe and f"decay_shape: {shape}" in recipe
    chosen = found["best"]
    assert chosen["random_init"] == min(found["arms"]["random_init"], key=lambda c: found["arms"]["random_init"][c]["final_eval_loss"])
    if chosen == {"random_init": "weight_decay=0.1,decay_shape=linear", "hyperclone_noise": "weight_decay=0,decay_shape=linear"}:
        assert found["speedup_at_best"]["speedup"] == grown["speedup"]  # the run's own pair
    assert set(found["speedup_at_shared"]) == set(found["arms"]["random_init"])
    bad = _benchmark("recipe_probe.py", str(out), "--set", "lr=0.1", check=False)
    assert bad.returncode == 2 and "--set takes KEY=V1,V2" in bad.stderr


def test_copy_correlation_finds_the_copies_growth_made_and_sees_them_part(tmp_path):
    """A grown model before training: every FFN unit has a copy, correlated 1. The same units after their
    weights are replaced by another model's are not copies any more, and the diagnostic says so."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import hyperclone

    convergence = _convergence()
    config = dict(vocab_size=260, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**config)).save_pretrained(tmp_path / "small")
    grown = hyperclone.grow(tmp_path / "small", {"width": 2, "noise": 0.5}, tmp_path / "grown", progress=False)
    wide = {**config, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 4}
    AutoModelForCausalLM.from_config(LlamaConfig(**wide)).save_pretrained(tmp_path / "other")
    corpus = tmp_path / "text.jsonl"
    corpus.write_text(json.dumps({"text": (ROOT / "README.md").read_text()}) + "\n")

    unchanged, parted = convergence.copy_correlation(grown, [grown, tmp_path / "other"], corpus, seq=64, blocks=8)
    assert unchanged["pairs"] == 2 * 48 and unchanged["copies"] > 0.999  # every unit of both layers paired
    assert parted["pairs"] == 2 * 48 and parted["copies"] < 0.5
    assert convergence.copy_correlation(tmp_path / "other", [tmp_path / "other"], corpus, seq=64, blocks=8)[0]["pairs"] == 0


def test_recorded_sweeps_render_as_tables_and_a_plot(tmp_path):
    """The recorded sweeps (sizes, pretraining length, warmup, noise) come back as tables and one PNG."""
    convergence = _convergence()
    result = json.loads((ROOT / "benchmarks" / "results" / "convergence-wd0.1.json").read_text())
    convergence._write(result, tmp_path, "sweeps", record=False)
    table = (tmp_path / "sweeps.md").read_text()
    for title in ("hidden (small)", "small model's tokens per parameter", "grown arm's warmup", "grown arm's noise"):
        assert title in table
    assert re.search(r"\| 1\.000 \(0\.\d\d\) \|", table)  # exact copies: their copies' correlation beside the unrelated units' floor
    assert "≥ 8.00x" in table  # a point reached at the smallest budget is shown as a bound
    assert (tmp_path / "sweeps-sweeps.png").read_bytes()[:4] == b"\x89PNG"
    # the warmup and noise sweeps start about at random init's final loss, so their panels show the final loss
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert convergence.BY_FINAL_LOSS == ("warmups", "noises")
    ax = plt.subplots()[1]
    convergence._final_loss_panel(ax, result["noises"], "noise")
    grown, start, random_init = (list(line.get_ydata()) for line in ax.lines)
    assert grown == [row["grown_final"] for row in result["noises"]]
    assert start[0] == result["noises"][0]["grown_start"] and random_init[0] == result["noises"][0]["random_init_final"]
    plt.close("all")


def test_noise_beyond_cap_scales_the_zero_sum_pattern_and_keeps_the_function(tmp_path):
    """The probe's models: k = 1 is the grown model bit for bit, k = 3 moves the copies further apart (past
    the exact split's cap) while transformers' own forward still gives the small model's logits."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    import hyperclone

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import noise_beyond_cap

    config = dict(vocab_size=260, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**config)).save_pretrained(tmp_path / "small")
    hyperclone.grow(tmp_path / "small", {"width": 2, "noise": 0}, tmp_path / "grown-exact_copies", progress=False)
    hyperclone.grow(tmp_path / "small", {"width": 2, "noise": 0.5}, tmp_path / "grown-hyperclone_noise", progress=False)
    noisy = load_file(tmp_path / "grown-hyperclone_noise" / "model.safetensors")
    exact = load_file(tmp_path / "grown-exact_copies" / "model.safetensors")

    same = load_file(noise_beyond_cap.scaled(tmp_path, 1, tmp_path / "x1") / "model.safetensors")
    assert all(torch.equal(same[n], noisy[n]) for n in noisy)
    wider = noise_beyond_cap.scaled(tmp_path, 3, tmp_path / "x3")
    far = load_file(wider / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"  # reads the copied FFN units: its in-columns carry the noise
    assert (far[name] - exact[name]).abs().sum() > 2.9 * (noisy[name] - exact[name]).abs().sum() > 0
    result = hyperclone.verify(tmp_path / "small", wider)
    assert result["passed"] and result["max_abs_diff"] < 1e-4


def _benchmark(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A benchmark script run as a user runs it, offline; it must succeed unless `check` is off."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    return done


def _convergence():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import convergence

    return convergence


def test_a_random_init_clears_what_a_killed_run_left_beside_it(tmp_path):
    """A run killed while saving a random init leaves `.name.pid`; the next run removes it, not a live process's."""
    convergence = _convergence()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    bench = convergence.Bench(replace(convergence.SCALES["cpu"], hidden=8, ffn=16), tmp_path)
    left, live = tmp_path / f".init-wide-seed0.{dead}", tmp_path / f".init-wide-seed0.{os.getppid()}"
    left.mkdir(), live.mkdir()
    model = bench.init_model("wide")
    assert (model / "config.json").exists() and not left.exists() and live.exists()
    assert json.loads((model / "config.json").read_text())["hidden_size"] == 16


def test_the_forecast_schedules_arms_as_the_pool_takes_them():
    """Two workers: arms that tune for themselves are queued at once, in order; a second seed joins the queue
    when the arm whose rate it reuses is done, behind everything queued before it."""
    makespan = _convergence()._makespan
    order = [("a", None), ("b", None), ("c", None), ("a1", "a")]
    # a 0-10 then c 10-40 on one worker, b 0-30 then a1 30-35 on the other (a1 was queued at 10, behind c)
    assert makespan(order, {"a": 10, "b": 30, "c": 30, "a1": 5}, jobs=2) == 40
    assert makespan(order, {"a": 10, "b": 30, "c": 30, "a1": 5}, jobs=1) == 75
    assert makespan(order, {"a": 10, "b": 30, "c": 30, "a1": 5}, jobs=4) == 30


def test_plan_forecasts_a_run_and_trains_nothing(tmp_path):
    out = tmp_path / "out"
    done = _benchmark("convergence.py", "--plan", "--json", "--minutes", "1", "--arms", "random_init,hyperclone_noise", "--out", str(out))
    [plan] = json.loads(done.stdout)
    assert set(plan["arm_seconds"]) == {"random_init", "hyperclone_noise"} and plan["minutes"] > 0
    assert set(plan["costs"]) == {"small", "wide/adamw"}
    assert all(cost["step_s"] > 0 and cost["run_s"] >= 0 for cost in plan["costs"].values())
    assert not list(out.rglob("metrics.jsonl"))  # the measuring runs removed, and no arm trained


def test_sizes_takes_the_factors_it_is_given_and_refuses_others(tmp_path):
    """`--sizes 1.5,2` sweeps those factors of the hidden size instead of the scale's three; factor 1 is the
    main run's arms (here the recorded run's), not trained again; a size the corpus cannot feed is refused
    before any size trains; a factor that is not positive is one line and exit 2."""
    import pytest

    convergence = _convergence()
    main = json.loads((ROOT / "benchmarks" / "results" / "convergence.json").read_text())
    scale = convergence.SCALES["cpu"]
    [row] = convergence.sizes_sweep(scale, main, None, tmp_path, factors=(1,))
    assert row["hidden"] == scale.hidden == main["scale"]["hidden"] and row["speedup"] == main["arms"]["hyperclone_noise"]["speedup"]
    assert row["continue_epochs"] == main["corpus_split"]["continue_epochs"]["wide"]  # how often the x2-wide pair saw its text
    assert not list(tmp_path.iterdir())  # nothing trained
    assert convergence._factors("1.5,2") == (1.5, 2.0)
    with pytest.raises(convergence.ShortOfText):  # hidden 64 needs 26 MB of text to pretrain: refused before hidden 24 trains
        convergence.sizes_sweep(scale, main, None, tmp_path / "up", factors=(1.5, 4))
    assert not list((tmp_path / "up").rglob("metrics.jsonl"))
    for bad in ("0,1", "x", ""):
        refused = _benchmark("convergence.py", f"--sizes={bad}", "--plan", check=False)
        assert refused.returncode == 2 and "give positive factors of the hidden size" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_gpu_sizing_picks_the_largest_model_that_fits_and_refuses_when_none_does(tmp_path, capsys):
    """fit_scale on this machine with a ladder of CPU-sized models: the forecasts are measured, not assumed,
    and a size the corpus cannot feed ends the ladder (here hidden 16: about 0.82 MB of text against 0.65 given)."""
    import pytest

    convergence = _convergence()
    corpus = _text(tmp_path / "corpus", 650_000)
    scale = replace(convergence.SCALES["cpu"], split_tokens_per_param=20, jobs=1)
    chosen = convergence.key_arms(scale)
    fitted, tried = convergence.fit_scale(scale, 1e6, corpus, tmp_path / "all", chosen, ladder=(8, 12, 16))
    assert fitted.hidden == 12 and fitted.heads == 1 and fitted.ffn == 33  # head size 8 kept
    assert [t["hidden"] for t in tried] == [8, 12, 16]
    assert tried[0]["params"]["wide"] < tried[1]["params"]["wide"] and "MB of text; hidden 16 needs" in tried[2]["short_of_text"]
    assert "not sized: " in convergence._plan_table(tried)
    with pytest.raises(SystemExit) as refused:
        convergence.fit_scale(scale, 1e-6, corpus, tmp_path / "none", chosen, ladder=(8, 16))
    assert refused.value.code == 2
    assert "even hidden 8 is forecast at" in capsys.readouterr().err
    # too little text for the smallest size: one line, exit 2, before anything is measured
    tiny = _text(tmp_path / "tiny", 100_000)
    with pytest.raises(convergence.ShortOfText):
        convergence.fit_scale(scale, 1e6, tiny, tmp_path / "tiny-work", chosen, ladder=(8, 16))
    short = _benchmark("convergence.py", "--data", str(tiny), "--plan", "--out", str(tmp_path / "cli"), check=False)
    assert short.returncode == 2 and short.stderr.startswith("error: ") and len(short.stderr.strip().splitlines()) == 1
    assert "give --data with more text" in short.stderr


def test_a_corpus_larger_than_the_run_needs_is_cut_and_the_records_split_is_not(tmp_path):
    """The continuation stops at `rest_bytes` (whole documents); the default run's corpus, under
    CONTINUE_FLOOR, is never cut, so its records' split stands."""
    convergence = _convergence()
    _, cont, cut = convergence.split_corpus(None, tmp_path, 1_000_000, rest_bytes=2_000_000)
    assert 2_000_000 <= cut["continue_bytes"] < 2_000_000 + max(len(d.encode()) for d in convergence.documents(None))
    assert cut["unused_documents"] > 0 and len(cont.read_text().splitlines()) + cut["unused_documents"] < cut["documents"]
    _, _, whole = convergence.split_corpus(None, tmp_path, 1_000_000)
    assert "unused_documents" not in whole and whole["continue_bytes"] > cut["continue_bytes"]
    layout = convergence.lay_out(convergence.Bench(convergence.SCALES["cpu"], tmp_path / "default"), None, None)
    assert "unused_documents" not in layout.corpus


def _text(directory: Path, size: int) -> Path:
    """About `size` bytes of real text (the standard library's source, cut into files of at most 8 kB)."""
    directory.mkdir()
    written = 0
    for i, doc in enumerate(_convergence().documents(None)):
        if written >= size:
            break
        part = doc[:8000]
        (directory / f"{i:05}.txt").write_text(part)
        written += len(part.encode())
    return directory


def test_the_finer_grid_reuses_the_float_a_tunnel_ran_at():
    """lr_resolution's neighbours of a sqrt-2 point land back on the factor-2 grid: the rate a tunnel already
    ran is taken as it ran (0.008), not as the sqrt-2 point read back from tune.json (6 digits) times sqrt 2
    computes (0.00799999...), which trains another draw of a chaotic run; a rate no tunnel ran is computed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lr_resolution

    between = float(f"{0.008 / lr_resolution.STEP:.6g}")  # as tune.json keys it
    assert between * lr_resolution.STEP != 0.008  # what the probe used to train at
    near = lr_resolution._near(between, {"0.008": 0.008})
    assert near == {"0.004": between / lr_resolution.STEP, "0.00566": between, "0.008": 0.008}
