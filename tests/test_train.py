"""`hyperclone train`: real training steps on tiny models and real text (the Python standard library's
json package), resume after SIGKILL, two processes, bad input."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

import hyperclone
from hyperclone.arch import FAMILIES, MOE_LAYOUTS

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")  # real text that ships with every Python
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
QUICK = dict(seq_len=64, batch_size=4, trackers="none", progress=False)
LAUNCH = Path(__file__).resolve().parents[1] / "recipes"  # the Accelerate launch configs shipped there


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def cli(*args, timeout=300):
    exe = shutil.which("hyperclone")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.mark.parametrize("optimizer", ["muonclip", "muon", "adamw"])
@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "glm4_moe"])
def test_loss_falls_over_40_steps(family, optimizer, tiny, tmp_path):
    model = tiny(family, vocab_size=300)
    result = hyperclone.train(model=str(model), data=DATA, out=str(tmp_path / "run"), max_steps=40, optimizer=optimizer,
                              lr=3e-3 if optimizer == "adamw" else 2e-3, **QUICK)
    curve = losses(tmp_path / "run")
    assert len(curve) == 40 and result["steps"] == 40
    assert sum(curve[-5:]) / 5 < curve[0] - 0.5, curve
    assert result["eval_loss"] is not None and result["eval_loss"] < curve[0]
    trained = hyperclone.load_model(tmp_path / "run" / "final")
    assert trained.config.model_type == family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_with_muonclip(family, tiny, tmp_path):
    """Two MuonClip steps for every family of the table: the max attention logit is captured at each step,
    and in a MoE family the balancing hooks found every MoE layer's router, which counted each routed token
    once (the expert load plot is drawn from those counts)."""
    model = tiny(family, vocab_size=300)
    out = tmp_path / "run"
    hyperclone.train(model=str(model), data=DATA, out=str(out), max_steps=2, optimizer="muonclip", lr=1e-3,
                     **{**QUICK, "seq_len": 32, "batch_size": 2})
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2 and all(r["max_attn_logit"] is not None for r in steps)
    if family in MOE_LAYOUTS:
        config = json.loads((model / "config.json").read_text())
        routed = 2 * 32 * config[MOE_LAYOUTS[family].topk_field]  # tokens of a step, each sent to top_k experts
        load = steps[-1]["expert_load"]
        assert load and all(sum(row) == routed for row in load), load
        assert (out / "expert_load.png").stat().st_size > 0


def test_run_outputs_and_moe_logging(tiny, tmp_path):
    model = tiny("glm4_moe", vocab_size=300)
    out = tmp_path / "run"
    hyperclone.train(model=str(model), data=DATA, out=str(out), max_steps=12, eval_every=6, save_every=4, keep=2,
                     eval_at_start=True, **{**QUICK, "trackers": "tensorboard"})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "max_attn_logit", "peak_memory"} <= set(steps[0])
    peaks = [r["peak_memory"] for r in steps]  # a high-water mark: at least torch's own footprint, never falling
    assert peaks[0] > 100 * 2 ** 20 and peaks == sorted(peaks)
    assert [r["step"] for r in steps if "expert_load" in r] == [10, 12]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 6, 12]
    assert steps[-1]["tokens"] == 12 * 4 * 64
    assert len(steps[-1]["expert_load"][0]) == 4  # tokens per expert, per MoE layer
    for png in ("loss.png", "expert_load.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert (out / "final" / png).read_bytes() == (out / png).read_bytes()  # beside the card that shows it
    card = (out / "final" / "README.md").read_text()
    assert "- mixture-of-experts" in card and "![expert_load](expert_load.png)" in card and f"{12 * 4 * 64:,}" in card
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-12", "step-8"]
    assert any((out / "hyperclone").rglob("events.out.tfevents*"))
    # aux-loss-free balancing moved the routers' correction biases
    trained = hyperclone.load_model(out / "final")
    assert trained.model.layers[1].mlp.gate.e_score_correction_bias.abs().sum() > 0


def test_expert_learning_rates_follow_the_hunyuan_rule(tiny):
    from hyperclone.train.optim import build_optimizer

    model = hyperclone.load_model(tiny("qwen3_moe"))
    opt = build_optimizer(model, "muonclip", lr=1.0, expert_lr_scale=(2 / 4) ** 0.5)
    scales = {g["lr_scale"] for g in opt.param_groups}
    assert scales == {1.0, (2 / 4) ** 0.5}


@pytest.mark.serial  # a kill timed against the run's checkpoints: run alone
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    args = ["train", "--model", str(model), "--data", DATA, "--max-steps", "30", "--seq-len", "64", "--batch-size", "4",
            "--save-every", "10", "--trackers", "none"]
    assert cli(*args, "-o", str(tmp_path / "full")).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([shutil.which("hyperclone"), *args, "-o", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-10" / "hyperclone_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert losses(killed)[-1] != losses(tmp_path / "full")[-1] or len(losses(killed)) < 30
    resumed = cli(*args, "-o", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(tmp_path / "full"), losses(killed)
    assert len(b) == 30  # the steps redone after the checkpoint are not counted twice
    assert abs(a[-1] - b[-1]) <= 1e-6 * abs(a[-1]), (a[-1], b[-1])  # same machine, same kernels: equal up to rounding
    again = cli(*args, "-o", str(tmp_path / "full"), "--resume")  # a finished run resumed: nothing to do, no crash
    assert again.returncode == 0 and "internal error" not in again.stderr, again.stderr
    assert losses(tmp_path / "full") == a


@pytest.mark.serial  # a process group on accelerate launch's default port: run alone
def test_two_processes_match_one_with_the_same_global_batch(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    common = ["--model", str(model), "--data", DATA, "--max-steps", "8", "--seq-len", "64", "--trackers", "none"]
    one = cli("train", *common, "--batch-size", "4", "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    # launched as the README says, with the DDP launch config shipped in recipes/ (on gloo here)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "ddp.yaml"),
                "--num_processes", "2", "--mixed_precision", "no", "-m", "hyperclone.train"]
    two = subprocess.run([*launcher, *common, "--batch-size", "2", "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 8
    # two processes sum gradients in another order than one: equal up to rounding, relative to the loss
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4, (a, b)
    tokens = [json.loads(line)["tokens"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert tokens[-1] == 8 * 4 * 64  # the global batch counts both processes


@pytest.mark.parametrize("fmt", ["accelerate", "dcp"])
def test_resume_is_exact_for_a_model_with_dropout(fmt, tiny, tmp_path):
    """Resume takes the uninterrupted run's steps also where the model draws random numbers (OPT's dropout):
    the checkpoint restores the random state (Accelerate's own, or each rank's beside the DCP shards), and
    no data loader draws from torch's global generator — the iterator a resumed run starts, or an eval
    pass, would otherwise shift every later dropout mask (both failed before)."""
    model = tiny("opt", vocab_size=300, dropout=0.1)
    common = dict(model=str(model), data=DATA, max_steps=6, save_every=3, eval_every=2, checkpoint_format=fmt,
                  optimizer="adamw", lr=3e-3, **{**QUICK, "seq_len": 32, "batch_size": 2})
    hyperclone.train(out=str(tmp_path / "run"), **common)
    shutil.copytree(tmp_path / "run", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-6", ignore_errors=True)
    shutil.rmtree(tmp_path / "cut" / "final")
    hyperclone.train(out=str(tmp_path / "cut"), resume=True, **common)
    assert losses(tmp_path / "cut") == losses(tmp_path / "run")


@pytest.mark.serial  # a process group on accelerate launch's default port: run alone
def test_async_dcp_checkpoint_from_two_processes_resumes_on_one_and_consolidates(tiny, tmp_path):
    """Two processes write a torch.distributed.checkpoint checkpoint in the background (each its own
    shard file) while they train; one process, and four, resume from it with the same global batch and
    take the same next steps; `hyperclone consolidate` turns the last one into the trained model."""
    model = tiny("llama", vocab_size=300, tie_word_embeddings=True)
    common = ["--model", str(model), "--data", DATA, "--max-steps", "4", "--save-every", "2", "--seq-len", "32",
              "--trackers", "none", "--checkpoint-format", "dcp", "--async-checkpoint"]
    # launched as the README says, with the DDP launch config shipped in recipes/ (on gloo here)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "ddp.yaml"),
                "--num_processes", "2", "--mixed_precision", "no", "-m", "hyperclone.train"]
    two = subprocess.run([*launcher, *common, "--batch-size", "2", "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    step2 = tmp_path / "two" / "checkpoints" / "step-2"
    assert sorted(p.name for p in step2.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # a shard file per rank
    one = tmp_path / "one"  # the same run, cut back to step 2, continued by one process
    shutil.copytree(tmp_path / "two", one)
    shutil.rmtree(one / "checkpoints" / "step-4")
    shutil.rmtree(one / "final")
    four = tmp_path / "four"  # and by four processes, one sequence each
    shutil.copytree(one, four)
    resumed = cli("train", *common, "--batch-size", "4", "-o", str(one), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    launcher[launcher.index("--num_processes") + 1] = "4"
    resumed = subprocess.run([*launcher, *common, "--batch-size", "1", "-o", str(four), "--resume"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b, c = losses(tmp_path / "two"), losses(one), losses(four)
    assert len(a) == len(b) == len(c) == 4 and a[:2] == b[:2] == c[:2]
    for other in (b, c):  # other numbers of processes sum in another order
        assert max(abs(x - y) / abs(x) for x, y in zip(a[2:], other[2:])) < 1e-5, (a, other)
    assert json.loads((four / "metrics.jsonl").read_text().splitlines()[3])["tokens"] == 4 * 4 * 32  # 4 x 1 sequence a step

    out = tmp_path / "consolidated"
    done = cli("consolidate", str(tmp_path / "two" / "checkpoints" / "step-4"), "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    # streamed a few tensors at a time into several shards: the same model, strictly loadable (the tied head left out)
    streamed = hyperclone.consolidate(tmp_path / "two" / "checkpoints" / "step-4", tmp_path / "streamed", shard_size="30KB",
                                      progress=False, read_bytes=20_000)
    index = json.loads((streamed / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1 and "lm_head.weight" not in index
    trained = hyperclone.load_model(tmp_path / "two" / "final").state_dict()
    for path in (out, streamed):
        merged = hyperclone.load_model(path).state_dict()
        assert merged.keys() == trained.keys() and all(torch.equal(merged[k], trained[k]) for k in merged)
    again = cli("consolidate", str(tmp_path / "two" / "checkpoints" / "step-4"), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    run_dir = cli("consolidate", str(tmp_path / "two"), "-o", str(tmp_path / "c2"))  # the run, not one of its checkpoints
    assert run_dir.returncode == 2 and "step-4" in run_dir.stderr and not (tmp_path / "c2").exists()


def test_decay_branches_from_a_stable_checkpoint(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    stable = tmp_path / "stable"
    hyperclone.train(model=str(model), data=DATA, out=str(stable), max_steps=20, schedule="constant", warmup=0,
                     save_every=10, **QUICK)
    branch = tmp_path / "branch"
    hyperclone.train(model=str(model), data=DATA, out=str(branch), max_steps=20, decay_from=str(stable / "checkpoints" / "step-10"),
                     decay_shape="linear", **QUICK)
    records = [r for r in map(json.loads, (branch / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert records[0]["step"] == 11 and len(records) == 10
    lrs = [r["lr"] for r in records]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-3 and lrs[-1] < 1e-4


def test_save_stable_writes_the_model_where_the_decay_begins(tiny, tmp_path):
    """--save-stable: out/stable is, bit for bit, a constant-rate run stopped at the decay's first step (the
    same data order and warmup), in transformers' own format, and grows like any checkpoint."""
    from transformers import AutoModelForCausalLM

    model = tiny("llama", vocab_size=300)
    run, settings = tmp_path / "wsd", ["--seq-len", "64", "--batch-size", "4", "--trackers", "none", "--optimizer", "adamw",
                                       "--lr", "3e-3", "--warmup", "2"]
    done = cli("train", "--model", str(model), "--data", DATA, "-o", str(run), "--max-steps", "20", "--decay-fraction", "0.25",
               "--save-stable", *settings)
    assert done.returncode == 0, done.stderr
    assert f"(stable phase: {run / 'stable'})" in done.stderr.replace("\n", "")
    constant = tmp_path / "constant"  # in a subprocess too, so both runs use one thread (another count may round otherwise)
    assert cli("train", "--model", str(model), "--data", DATA, "-o", str(constant), "--max-steps", "15", "--schedule", "constant",
               *settings).returncode == 0
    stable, info = AutoModelForCausalLM.from_pretrained(run / "stable", output_loading_info=True)
    assert not any(info.values()), info
    reference, final = (hyperclone.load_model(p).state_dict() for p in (constant / "final", run / "final"))
    assert stable.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in stable.state_dict().items())
    assert not all(torch.equal(v, final[k]) for k, v in stable.state_dict().items())  # the decay went on from there
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [15, 20]
    card = (run / "stable" / "README.md").read_text()
    assert "step 15 of 20" in card and f"{evals[0]['eval_loss']:.4f}" in card
    grown = hyperclone.grow(run / "stable", {"width": 2}, tmp_path / "grown", progress=False)
    assert hyperclone.verify(run / "stable", grown)["passed"]
    again = cli("train", "--model", str(model), "--data", DATA, "-o", str(run), "--force", "--max-steps", "20", "--schedule", "cosine",
                "--save-stable", *settings)
    assert again.returncode == 2 and "needs --schedule wsd" in again.stderr and "Traceback" not in again.stderr
    assert (run / "stable").is_dir()  # a refused run leaves the earlier one as it was


def test_save_stable_needs_a_stable_phase_it_can_keep():
    """Under DiLoCo a failed outer sync undoes the inner steps since the last one, so the stable model must be
    a synced one; a run whose decay begins at its first step has no stable phase at all."""
    from hyperclone.errors import UserError
    from hyperclone.train.config import make_config

    settings = dict(model="m", data=DATA, diloco=True, lighthouse="localhost:29510", max_steps=20, sync_every=10, save_stable=True)
    with pytest.raises(UserError, match="decay begins at step 15, between outer syncs"):
        make_config(**settings, decay_fraction=0.25)
    assert make_config(**settings, decay_fraction=0.5).save_stable
    with pytest.raises(UserError, match="no stable phase"):
        make_config(model="m", data=DATA, save_stable=True, warmup=0, decay_fraction=1.0)


def test_split_seed_holds_the_eval_set_while_the_seed_changes_the_data_order(tiny, tmp_path):
    """--seed draws the data order and, unless --split-seed is given, the held-out split: with it, runs at
    two seeds are judged on the same blocks (the same model evaluates the same at step 0)."""
    model = tiny("llama", vocab_size=300)

    def first(seed: int, split_seed: int | None) -> tuple[float, float]:
        out = tmp_path / f"seed{seed}-split{split_seed}"
        hyperclone.train(model=str(model), data=DATA, out=str(out), max_steps=1, seed=seed, split_seed=split_seed, eval_at_start=True,
                         **QUICK)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return records[0]["eval_loss"], next(r["loss"] for r in records if "loss" in r)

    (eval0, loss0), (eval1, loss1), (eval_own, _) = first(0, None), first(1, 0), first(1, None)
    assert eval1 == eval0 and loss1 != loss0  # one held-out set, another first batch
    assert eval_own != eval0  # without --split-seed the seed draws the split too
    assert first(0, 0) == (eval0, loss0)  # a split seed equal to the seed is the run without one


def test_streaming_with_a_real_tokenizer_and_jsonl(tiny, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text() for p in sorted(Path(DATA).glob("*.py"))]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts * 3))
    model = shutil.copytree(tiny("llama", vocab_size=300), tmp_path / "model")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>").save_pretrained(model)
    out = tmp_path / "run"
    result = cli("train", "--model", str(model), "--data", str(corpus), "--text-field", "body", "--streaming",
                 "--max-steps", "12", "--seq-len", "64", "--batch-size", "4", "--save-every", "6", "--trackers", "none", "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokenizer: " in result.stderr and "no tokenizer" not in result.stderr
    assert len(losses(out)) == 12 and (out / "final" / "tokenizer.json").exists()
    resumed = cli("train", "--model", str(model), "--data", str(corpus), "--text-field", "body", "--streaming",
                  "--max-steps", "14", "--seq-len", "64", "--batch-size", "4", "--trackers", "none", "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(losses(out)) == 14


def test_hub_dataset_offline_is_a_clear_error(tiny, tmp_path):
    result = cli("train", "--model", str(tiny("llama", vocab_size=300)), "--data", "someone/some-corpus", "--seq-len", "64",
                 "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "offline" in result.stderr


@pytest.fixture()
def bad_inputs(tiny, tmp_path):
    model = tiny("llama", vocab_size=300)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"PAR1 not really parquet")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    exploding = tmp_path / "explode.yaml"
    exploding.write_text("kind: training\nlr: 1.0e+30\nmax_bad_steps: 3\ngrad_clip: 0\noptimizer: adamw\n")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    base = ["--max-steps", "20", "--seq-len", "64", "--batch-size", "4", "--trackers", "none"]
    return {
        "empty_data": (["--model", str(model), "--data", str(empty), *base], "is empty"),
        "unreadable_data": (["--model", str(model), "--data", str(garbage), *base], "cannot read data"),
        "seq_len_beyond_positions": (["--model", str(model), "--data", DATA, *base, "--seq-len", "4096"], "max_position_embeddings"),
        "not_a_causal_lm": (["--model", str(encoder), "--data", DATA, *base], "not a causal language model"),
        "no_config": (["--model", str(tmp_path), "--data", DATA, *base], "not a model directory"),
        "existing_output": (["--model", str(model), "--data", DATA, *base, "-o", str(occupied)], "--resume"),
        "non_finite_loss": (["--model", str(model), "--data", DATA, *base, "--recipe", str(exploding)], "not finite"),
        "async_without_dcp": (["--model", str(model), "--data", DATA, *base, "--async-checkpoint"], "--checkpoint-format dcp"),
    }


@pytest.mark.parametrize("case", ["empty_data", "unreadable_data", "seq_len_beyond_positions", "not_a_causal_lm",
                                  "no_config", "existing_output", "non_finite_loss", "async_without_dcp"])
def test_bad_training_input_is_one_clear_line(case, bad_inputs, tmp_path):
    args, expected = bad_inputs[case]
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out")]
    result = cli("train", *args)
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if case == "existing_output":
        assert (tmp_path / "occupied" / "notes.txt").read_text() == "keep me"


@pytest.mark.serial  # a process group on accelerate launch's default port: run alone
def test_fsdp2_on_two_processes_matches_one_process(tiny, tmp_path):
    """FSDP2 under accelerate launch, asked for with --fsdp (gemma, its layers compiled) or by the launch config recipes/fsdp2.yaml
    (qwen3_moe, with activation checkpointing and sharded checkpoints by default): transformers' model
    built on the meta device, sharded with fully_shard, each process reading only its rows (and its
    experts) from the safetensors files. Two processes train what one does with the same global batch
    (MuonClip on the shards), and the final model, gathered from the shards, loads strictly in transformers."""
    two_processes = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    shipped = ["--config_file", str(LAUNCH / "fsdp2.yaml"), "-m", "hyperclone.train", "--activation-checkpointing", "--save-every", "2"]
    launchers = {"gemma": [*two_processes, "--mixed_precision", "no", "--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no",
                           "-m", "hyperclone.train", "--fsdp", "--compile"],
                 "qwen3_moe": [*two_processes, "--mixed_precision", "no", *shipped]}
    for family, launcher in launchers.items():  # tied embeddings; fused experts sharded by expert
        model = tiny(family, vocab_size=300)
        common = ["--model", str(model), "--data", DATA, "--max-steps", "4", "--seq-len", "32", "--trackers", "none"]
        one = cli("train", *common, "--batch-size", "4", "-o", str(tmp_path / f"{family}-one"))
        assert one.returncode == 0, one.stderr[-2000:]
        two = subprocess.run([*launcher, *common, "--batch-size", "2", "-o", str(tmp_path / f"{family}-two")],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert two.returncode == 0, two.stderr[-2000:]
        held, total = (int(n.replace(",", "")) for n in re.search(r"holds about ([\d,]+) of the ([\d,]+)", two.stderr).groups())
        assert held <= total // 2 + total // 20  # no process held the whole model
        a, b = losses(tmp_path / f"{family}-one"), losses(tmp_path / f"{family}-two")
        assert len(a) == len(b) == 4 and max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4, (family, a, b)
        from transformers import AutoModelForCausalLM

        whole = AutoModelForCausalLM.from_pretrained(tmp_path / f"{family}-one" / "final")
        gathered, info = AutoModelForCausalLM.from_pretrained(tmp_path / f"{family}-two" / "final", output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        # streamed from each process's shards (never gathered whole), saved as save_pretrained would
        configs = [json.loads((tmp_path / f"{family}-{n}" / "final" / "config.json").read_text()) for n in ("one", "two")]
        assert configs[0]["architectures"] == configs[1]["architectures"] and not (tmp_path / f"{family}-two" / ".final.dcp.tmp").exists()
        ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            x, y = whole(input_ids=ids).logits, gathered(input_ids=ids).logits
        # the gradients were summed in another order; Adam turns that rounding into whole steps for weights
        # whose gradient is ~0 (embedding rows no token used), so the outputs are compared, relative to their size
        assert (x - y).abs().max() <= 1e-3 * x.abs().max(), (family, (x - y).abs().max())
    run = tmp_path / "qwen3_moe-two"
    settings = json.loads((run / "hyperclone_run.json").read_text())["settings"]
    assert settings["fsdp"] and settings["activation_checkpointing"] and settings["checkpoint_format"] == "dcp"
    assert sorted(p.name for p in (run / "checkpoints" / "step-2").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    # the sharded run, cut back to its step-2 checkpoint and resumed, takes the same steps again
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    shutil.rmtree(resumed / "final")
    again = subprocess.run([*launchers["qwen3_moe"], *common, "--batch-size", "2", "-o", str(resumed), "--resume"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-2000:]
    assert losses(resumed) == losses(run)
    done = cli("consolidate", str(run / "checkpoints" / "step-4"), "-o", str(tmp_path / "consolidated"))  # sharded -> one model
    assert done.returncode == 0, done.stderr[-2000:]
    merged, final = (hyperclone.load_model(path).state_dict() for path in (tmp_path / "consolidated", run / "final"))
    assert merged.keys() == final.keys() and all(torch.equal(merged[k], final[k]) for k in merged)

    # the launch config as shipped: bf16 compute over float32 master weights (FSDP2's mixed precision)
    bf16 = subprocess.run([*two_processes, *shipped, *common, "--batch-size", "2", "-o", str(tmp_path / "bf16")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert bf16.returncode == 0, bf16.stderr[-2000:]
    assert json.loads((tmp_path / "bf16" / "hyperclone_run.json").read_text())["settings"]["mixed_precision"] == "bf16"
    rounded = losses(tmp_path / "bf16")
    assert rounded != losses(run) and max(abs(x - y) / x for x, y in zip(rounded, losses(run))) < 2e-2  # bf16's rounding, no more
    from safetensors import safe_open

    with safe_open(tmp_path / "bf16" / "final" / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}  # the master weights


def test_compiled_layers_train_what_eager_layers_do(tiny, tmp_path):
    """--compile: each decoder layer through torch.compile (inductor), with QK-Clip's capture and the MoE
    router hooks inside the compiled layers. The same steps up to the fused kernels' rounding, the same
    tokens per expert, the same max logit."""
    model = tiny("qwen3_moe", vocab_size=300)
    for compiled in (False, True):
        hyperclone.train(model=str(model), data=DATA, out=str(tmp_path / str(compiled)), max_steps=4, compile=compiled, **QUICK)
    eager, compiled = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
                       for name in ("False", "True"))
    assert max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(eager, compiled)) < 1e-4  # as two processes are
    routed = 4 * 64 * 2  # every training token to its top-2 experts, counted once, inside the compiled layers too
    for a, b in zip(eager[-1]["expert_load"], compiled[-1]["expert_load"]):
        assert sum(a) == sum(b) == routed
        # compiled kernels round the router logits differently: a near-tie may pick another expert on another CPU
        assert sum(abs(x - y) for x, y in zip(a, b)) <= 0.02 * routed, (a, b)
    assert abs(eager[-1]["max_attn_logit"] - compiled[-1]["max_attn_logit"]) <= 1e-5 * eager[-1]["max_attn_logit"]


def test_activation_checkpointing_changes_nothing_but_memory(tiny, tmp_path):
    """Recomputing each decoder layer in backward gives the same steps bit for bit, and a MoE's balancing
    losses and tokens per expert are counted once, not again during the recompute."""
    model = tiny("qwen3_moe", vocab_size=300)
    for checkpointing in (False, True):
        hyperclone.train(model=str(model), data=DATA, out=str(tmp_path / str(checkpointing)), max_steps=4,
                         activation_checkpointing=checkpointing, **QUICK)
    plain, recomputed = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                         for name in ("False", "True"))
    assert [r["loss"] for r in plain if "loss" in r] == [r["loss"] for r in recomputed if "loss" in r]
    assert plain[3]["expert_load"] == recomputed[3]["expert_load"]
    assert sum(plain[3]["expert_load"][0]) == 4 * 64 * 2  # every training token to its top-2 experts, once


def test_fsdp_bad_settings_are_one_line(tiny, tmp_path):
    """Also a launch config hyperclone cannot honour: FSDP1, parameter offload, an unknown precision
    (read from the environment `accelerate launch --config_file` sets), a launch config given as a recipe,
    and --compile on a CPU without a C++ compiler."""
    model = tiny("llama", vocab_size=300)
    base = ["train", "--model", str(model), "--data", DATA, "--max-steps", "2", "--trackers", "none"]
    fsdp1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}
    offload = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}
    cases = ((["--fsdp"], {}, "accelerate launch"),
             (["--fsdp", "--save-every", "1", "--checkpoint-format", "accelerate"], {}, "--checkpoint-format dcp"),
             ([], fsdp1, "fsdp_version: 2"), ([], offload, "fsdp_offload_params"),
             ([], {"ACCELERATE_MIXED_PRECISION": "fp8"}, "mixed_precision 'fp8'"),
             (["--recipe", "fsdp2"], {}, "--config_file"),
             (["--compile"], {"PATH": str(Path(sys.executable).parent), "CXX": ""}, "C++ compiler"))  # no compiler on the PATH
    for i, (extra, env, words) in enumerate(cases):
        result = subprocess.run([shutil.which("hyperclone"), *base, *extra, "-o", str(tmp_path / f"r{i}")],
                                capture_output=True, text=True, env={**ENV, **env}, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and words in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr and not (tmp_path / f"r{i}").exists()
