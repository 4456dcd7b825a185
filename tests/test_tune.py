"""`hyperclone tune`: MiniCPM's wind tunnel on a tiny real model and real text — a stable run per
learning rate, real WSD decay branches, the best learning rate written as a recipe `train` accepts."""
import json
import os
import shutil
import subprocess
import sysconfig
import warnings
from pathlib import Path

import pytest

import hyperclone
from hyperclone.train.config import make_config
from hyperclone.train.metrics import read_metrics

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
SMALL = dict(seq_len=64, batch_size=4, optimizer="adamw", eval_batches=4)


def test_wind_tunnel_finds_a_sane_learning_rate_and_writes_a_recipe(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    with pytest.warns(UserWarning, match="edge of the grid"):  # 32 steps favour the largest learning rate here
        result = hyperclone.tune(model, DATA, tmp_path / "tune", lrs=[3e-3, 1e-4, 0.03], budget_tokens=32 * 256,
                                 extend=0, **SMALL)
    losses = {float(lr): {int(t): v for t, v in by.items()} for lr, by in result["eval_loss"].items()}
    assert sorted(losses) == [1e-4, 3e-3, 0.03] and all(len(by) == 4 for by in losses.values())
    assert result["budgets_tokens"] == [4 * 256, 8 * 256, 16 * 256, 32 * 256]
    full = {lr: by[32 * 256] for lr, by in losses.items()}
    assert result["best_lr"] == min(full, key=full.get) and result["best_eval_loss"] == min(full.values())
    assert full[1e-4] > full[3e-3] + 0.5, full  # 32 steps at a tiny learning rate barely move the loss
    sane = losses[3e-3]
    assert sane[32 * 256] < sane[4 * 256] - 0.3, sane  # a longer budget reaches a lower loss
    # every branch really decayed from its stable checkpoint: 16-step budget branches at step 12 (20 % decay)
    branch = [json.loads(line) for line in (tmp_path / "tune" / "runs" / "lr-0.003" / "budget-4" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in branch if "loss" in r]
    assert steps == list(range(13, 17)) and branch[-1]["eval_loss"] == sane[16 * 256]
    assert result["best_lr_by_budget"] == {str(t): min(losses, key=lambda lr: losses[lr][t]) for t in result["budgets_tokens"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trained for the budget it was tuned at: nothing to say
        recipe = make_config(result["recipe"], model=str(model), data=DATA)
    assert recipe.lr == result["best_lr"] and recipe.optimizer == "adamw" and recipe.schedule == "wsd"
    assert recipe.max_steps == 32 and recipe.tuned_tokens == 32 * 256 and recipe.seq_len * recipe.batch_size == 256
    with pytest.warns(UserWarning, match=r"tuned for 8,192 tokens and this run trains for 81,920: .*--budget-tokens 81920"):
        make_config(result["recipe"], model=str(model), data=DATA, max_steps=320)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a learning rate given by hand is the user's, not the recipe's tuned one
        make_config(result["recipe"], model=str(model), data=DATA, max_steps=320, lr=1e-3)
    assert (tmp_path / "tune" / "tune.png").stat().st_size > 1000
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["best_lr"] == result["best_lr"]


def test_cli_extends_past_the_edge_and_keeps_to_the_force_rules(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    exe = shutil.which("hyperclone")
    args = [exe, "tune", "--model", str(model), "--data", DATA, "--lrs", "3e-4,3e-3", "--budget-tokens", str(24 * 256),
            "--seq-len", "64", "--batch-size", "4", "--optimizer", "adamw", "--extend", "1", "-o", str(tmp_path / "t")]
    first = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert first.returncode == 0, first.stderr
    # at 24 steps the larger rate wins, so the search tries one past it (x2) before answering
    assert "tune: lr 0.006" in first.stderr and "6,144 tokens" in first.stdout
    # one tokens bar over every run, its total grown by the extra learning rate: 3 x (16 stable + 1+2+4+8 decay steps) x 256
    assert "tok/s" in first.stderr and "23,808/23,808 tokens" in first.stderr
    # the inner runs' routine lines (tokenizer, decay branch) stay out of the way of the bar
    assert "tokenizer: " not in first.stderr and "decay branched" not in first.stderr
    tried = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert sorted(map(float, tried["eval_loss"])) == [3e-4, 3e-3, 6e-3]
    assert f"best learning rate {tried['best_lr']:.3g}" in first.stderr and f"* {tried['best_lr']:.6g}" in first.stdout
    assert "best lr" in first.stdout  # each budget's own best rate, under its column
    again = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 2 and "already holds results" in again.stderr and "Traceback" not in again.stderr
    rerun = subprocess.run([*args, "--force", "--lrs", "3e-3", "--extend", "0"], capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr  # its own earlier search is replaced
    assert list(json.loads((tmp_path / "t" / "tune.json").read_text())["eval_loss"]) == ["0.003"]
    (tmp_path / "t" / "runs" / "mine.txt").write_text("notes")  # inside its runs/ folder: still not its to delete
    forced = subprocess.run([*args, "--force"], capture_output=True, text=True, env=ENV, timeout=600)
    assert forced.returncode == 2 and "mine.txt" in forced.stderr and (tmp_path / "t" / "runs" / "mine.txt").exists()
    (tmp_path / "t" / "runs" / "mine.txt").unlink()
    (tmp_path / "t" / "mine.txt").write_text("notes")
    forced = subprocess.run([*args, "--force"], capture_output=True, text=True, env=ENV, timeout=600)
    assert forced.returncode == 2 and "mine.txt" in forced.stderr and (tmp_path / "t" / "mine.txt").exists()
    bad = subprocess.run([*args[:-1], str(tmp_path / "u"), "--lrs", "fast"], capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "--lrs" in bad.stderr


def test_too_short_a_budget_is_one_line(tiny, tmp_path):
    with pytest.raises(hyperclone.UserError, match="too short to branch"):
        hyperclone.tune(tiny("llama", vocab_size=300), DATA, tmp_path / "t", budget_tokens=4 * 256, **SMALL)


def test_bad_input_leaves_no_tune_directory_behind(tiny, tmp_path):
    """A tune that fails before its first learning rate is done (here: data that is not there) removes the
    directory it made, so the corrected command runs without --force."""
    for _ in range(2):  # the second time the same error, not "already holds"
        with pytest.raises(hyperclone.UserError, match="missing"):
            hyperclone.tune(tiny("llama", vocab_size=300), str(tmp_path / "missing"), tmp_path / "t", budget_tokens=64 * 256, **SMALL)
        assert not (tmp_path / "t").exists()


def test_seeds_judge_each_rate_by_its_mean(tiny, tmp_path):
    """--seeds runs every rate at several training seeds on one held-out split and chooses by the mean; each
    seed's run is the one a single-seed tune at that seed and split seed makes."""
    model = tiny("llama", vocab_size=300)
    full = str(16 * 256)
    with pytest.warns(UserWarning, match="edge of the grid"):
        result = hyperclone.tune(model, DATA, tmp_path / "t", lrs=[3e-3, 1e-2], budget_tokens=16 * 256, budgets=(1, 2), seeds=2, seed=5,
                                 extend=0, **SMALL)
    assert result["seeds"] == 2 and result["seed"] == 5
    for lr, by in result["eval_loss"].items():
        for tokens, mean in by.items():
            runs = result["eval_loss_by_seed"][lr][tokens]
            assert len(runs) == 2 and runs[0] != runs[1] and mean == (runs[0] + runs[1]) / 2  # another data order each
    assert sorted(p.name for p in (tmp_path / "t" / "runs").iterdir()) == ["lr-0.003-seed-5", "lr-0.003-seed-6", "lr-0.01-seed-5",
                                                                          "lr-0.01-seed-6"]
    assert result["best_lr"] == min(map(float, result["eval_loss"]), key=lambda lr: result["eval_loss"][f"{lr:.6g}"][full])
    assert "mean of 2 seeds" in (tmp_path / "t" / "recipe.yaml").read_text()
    starts = [[r["eval_loss"] for r in read_metrics(tmp_path / "t" / "runs" / f"lr-0.003-seed-{seed}" / "stable" / "metrics.jsonl")
               if "eval_loss" in r][0] for seed in (5, 6)]
    assert starts[0] == starts[1]  # the same model on the same held-out blocks: one split for both seeds
    single = hyperclone.tune(model, DATA, tmp_path / "u", lrs=[3e-3], budget_tokens=16 * 256, budgets=(1, 2), seed=6, split_seed=5,
                             extend=0, **SMALL)
    assert single["seeds"] == 1 and single["eval_loss_by_seed"]["0.003"][full] == [single["eval_loss"]["0.003"][full]]
    assert single["eval_loss"]["0.003"][full] == pytest.approx(result["eval_loss_by_seed"]["0.003"][full][1], rel=1e-6)
    assert (tmp_path / "u" / "runs" / "lr-0.003").is_dir()  # one seed: the folders keep their names
    args = [shutil.which("hyperclone"), "tune", "--model", str(model), "--data", DATA, "--lrs", "3e-3", "--budget-tokens", str(32 * 256),
            "--seq-len", "64", "--batch-size", "4", "--optimizer", "adamw", "--seeds", "2", "-o", str(tmp_path / "w")]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "mean ± half the range of 2 seeds" in done.stdout and "at seeds 0, 1" in done.stderr
    assert "19,968/19,968 tokens" in done.stderr  # 2 seeds x (24 stable + 1+2+4+8 decay steps) x 256
    bad = subprocess.run([*args[:-1], str(tmp_path / "v"), "--seeds", "0"], capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "--seeds" in bad.stderr and "Traceback" not in bad.stderr and not (tmp_path / "v").exists()


def test_budgets_at_best_branches_the_smaller_budgets_at_the_best_rate_only(tiny, tmp_path):
    """--budgets-at best: every rate runs its stable run and the full budget's branch, then only the best rate
    branches the smaller budgets, from the same checkpoints, so its losses are the ones every rate's tune gives."""
    model = tiny("llama", vocab_size=300)
    settings = dict(lrs=[3e-3, 1e-2], budget_tokens=16 * 256, budgets=(1, 2), extend=0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two rates: the best sits on an edge
        every = hyperclone.tune(model, DATA, tmp_path / "every", **settings)
        best = hyperclone.tune(model, DATA, tmp_path / "best", budgets_at="best", **settings)
    chosen, full = f"{best['best_lr']:.6g}", str(16 * 256)
    other = next(lr for lr in best["eval_loss"] if lr != chosen)
    assert best["best_lr"] == every["best_lr"] and best["budgets_at"] == "best"
    assert best["eval_loss"][chosen] == every["eval_loss"][chosen] and list(best["eval_loss"][chosen]) == [str(8 * 256), full]
    assert best["eval_loss"][other] == {full: every["eval_loss"][other][full]}
    assert best["best_lr_by_budget"] == {full: best["best_lr"]}  # no other budget ran at every rate
    runs = tmp_path / "best" / "runs"
    assert sorted(p.name for p in (runs / f"lr-{float(other):.3g}").iterdir()) == ["budget-2", "stable"]
    assert sorted(p.name for p in (runs / f"lr-{float(chosen):.3g}").iterdir()) == ["budget-1", "budget-2", "stable"]
    args = [shutil.which("hyperclone"), "tune", "--model", str(model), "--data", DATA, "--lrs", "3e-3,1e-2", "--budget-tokens", str(24 * 256),
            "--seq-len", "64", "--batch-size", "4", "--optimizer", "adamw", "--extend", "0", "--budgets-at", "best", "-o", str(tmp_path / "c")]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    # 2 rates x (16 stable + 8 decay steps) + the best rate's 1+2+4 decay steps for 3,072, 6,144 and 12,288 tokens, x 256
    assert "14,080/14,080 tokens" in done.stderr and "3 more decay branches" in done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 2}
    assert rows[other].count("–") == 3 and "–" not in rows[f"* {chosen}"] and rows["best lr"].count("–") == 3
    bad = subprocess.run([*args[:-1], str(tmp_path / "v"), "--budgets-at", "some"], capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "--budgets-at" in bad.stderr and "Traceback" not in bad.stderr and not (tmp_path / "v").exists()


def test_weight_decays_and_decay_fractions_search_the_rates_at_each_combination_and_keep_the_best(tiny, tmp_path):
    """--weight-decays and --decay-fractions: the whole learning-rate search at each combination (each run really
    trained at it: the same losses a tune at that combination alone gives, its decay branch from its own
    branch point), the lowest kept in the recipe, and the smaller budgets (with --budgets-at best) branched
    at that combination only."""
    model = tiny("llama", vocab_size=300)
    settings = dict(lrs=[3e-3, 1e-2], budget_tokens=16 * 256, budgets=(1, 2), extend=0, **SMALL)
    full = str(16 * 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two rates: the best sits on an edge
        both = hyperclone.tune(model, DATA, tmp_path / "both", weight_decays=[0.5, 0], decay_fractions=[0.5, 0.25], budgets_at="best",
                               **settings)
        alone = hyperclone.tune(model, DATA, tmp_path / "alone", weight_decay=0.5, decay_fraction=0.5, **settings)
    combos = ["weight_decay=0,decay_fraction=0.25", "weight_decay=0,decay_fraction=0.5", "weight_decay=0.5,decay_fraction=0.25",
              "weight_decay=0.5,decay_fraction=0.5"]
    assert both["searched"] == ["weight_decay", "decay_fraction"] and list(both["settings"]) == combos
    found = both["settings"]
    assert found[combos[3]]["eval_loss"] == pytest.approx({lr: by[full] for lr, by in alone["eval_loss"].items()}, rel=1e-6)
    assert len({tuple(entry["eval_loss"].values()) for entry in found.values()}) == 4  # every setting reached the optimizer
    lowest = {key: min(entry["eval_loss"].values()) for key, entry in found.items()}
    chosen = min(lowest, key=lowest.get)
    assert (both["weight_decay"], both["decay_fraction"]) == (found[chosen]["weight_decay"], found[chosen]["decay_fraction"])
    assert both["best_eval_loss"] == lowest[chosen] and both["best_lr"] == found[chosen]["best_lr"]
    assert {lr: by[full] for lr, by in both["eval_loss"].items()} == found[chosen]["eval_loss"]
    recipe = make_config(both["recipe"], model=str(model), data=DATA)
    assert (recipe.weight_decay, recipe.decay_fraction, recipe.lr) == (both["weight_decay"], both["decay_fraction"], both["best_lr"])
    assert "weight decay 0, 0.5 x decay fraction 0.25, 0.5 (best" in (tmp_path / "both" / "recipe.yaml").read_text()
    runs = tmp_path / "both" / "runs"
    tag = f"wd-{both['weight_decay']:g}-df-{both['decay_fraction']:g}"
    branched = {p.name for p in runs.iterdir() if (p / "budget-1").is_dir()}
    assert len(list(runs.iterdir())) == 8 and branched == {f"lr-{both['best_lr']:.3g}-{tag}"}
    # the budget-1 branch (8 steps) decays over its own fraction: from step 6 at 0.25, step 4 at 0.5
    branch = read_metrics(runs / f"lr-{both['best_lr']:.3g}-{tag}" / "budget-1" / "metrics.jsonl")
    assert min(r["step"] for r in branch if "loss" in r) == 8 - round(both["decay_fraction"] * 8) + 1
    assert alone["weight_decay"] == 0.5 and "settings" not in alone and "searched" not in alone
    args = [shutil.which("hyperclone"), "tune", "--model", str(model), "--data", DATA, "--lrs", "3e-3", "--budget-tokens", str(24 * 256),
            "--seq-len", "64", "--batch-size", "4", "--optimizer", "adamw", "--extend", "0", "--budgets-at", "best", "--weight-decays", "0,0.5",
            "--decay-fractions", "0.25,0.5", "-o", str(tmp_path / "c")]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "tune: lr 0.003, weight decay 0.5, decay fraction 0.25" in done.stderr
    cli = json.loads((tmp_path / "c" / "tune.json").read_text())
    assert f"at weight decay {cli['weight_decay']:g}, decay fraction {cli['decay_fraction']:g}" in " ".join(done.stderr.split())
    # the settings table: a row per combination, a column per searched setting, the chosen one starred
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in done.stdout.splitlines() if line.count("│") == 5]
    rows = [row for row in cells if row[1] in ("0.25", "0.5")]  # a loss in the rates' table has four decimals
    assert sorted((decay.lstrip("* "), fraction) for decay, fraction, *_ in rows) == [("0", "0.25"), ("0", "0.5"), ("0.5", "0.25"), ("0.5", "0.5")]
    assert [row[:2] for row in rows if row[0].startswith("* ")] == [[f"* {cli['weight_decay']:g}", f"{cli['decay_fraction']:g}"]]
    for option, bad in (("--weight-decays", "-0.1"), ("--weight-decays", "none"), ("--decay-fractions", "1"), ("--decay-fractions", "0")):
        wrong = subprocess.run([*args[:-1], str(tmp_path / "v"), option, bad], capture_output=True, text=True, env=ENV, timeout=120)
        assert wrong.returncode == 2 and option in wrong.stderr and "Traceback" not in wrong.stderr and not (tmp_path / "v").exists()
