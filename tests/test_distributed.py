"""Training beyond one process: DiLoCo across replica groups on torchft (a real lighthouse, real
processes talking over gloo on the loopback)."""
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
from hyperclone.arch import FAMILIES

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _train(model, out, *extra: str) -> list[str]:
    return [shutil.which("hyperclone"), "train", "--model", str(model), "--data", DATA, "-o", str(out), "--max-steps", "3",
            "--seq-len", "32", "--batch-size", "2", "--trackers", "none", "--optimizer", "adamw", "--lr", "3e-3", *extra]


@pytest.mark.serial  # replica groups, a lighthouse and heartbeats: a race against a clock
def test_diloco_outer_step_is_nesterov_on_the_averaged_pseudo_gradients(tiny, tmp_path):
    """Two replica groups (real processes, a real lighthouse) take 3 inner steps each on their own half of
    the data, then one sync: both end with W0 - lr_out * (1 + momentum) * mean_i(W0 - W_i) — the first
    step of Nesterov SGD on the averaged pseudo-gradients — where W_i is what each group's inner steps
    alone give (the same run without --diloco, on the same shard)."""
    pytest.importorskip("torchft")
    from torchft.coordination import LighthouseServer

    model = tiny("llama", vocab_size=300)
    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
    try:
        groups = [subprocess.Popen(_train(model, tmp_path / f"group{i}", "--diloco", "--sync-every", "3", "--lighthouse",
                                          lighthouse.address(), "--replicas", "2", "--replica-index", str(i), "--min-replicas", "2",
                                          "--outer-lr", "0.7", "--outer-momentum", "0.9"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for i in range(2)]
        outputs = [g.communicate(timeout=300) for g in groups]
    finally:
        lighthouse.shutdown()
    for group, (_, err) in zip(groups, outputs):
        assert group.returncode == 0, err[-3000:]
    start, first, second = (hyperclone.load_model(path).state_dict() for path in
                            [model] + [tmp_path / name / "final" for name in ("group0", "group1")])
    inner = []
    for i in range(2):  # each group's inner steps on their own, over the DiLoCo run (--force: all of it is hyperclone's)
        done = subprocess.run(_train(model, tmp_path / f"group{i}", "--replicas", "2", "--replica-index", str(i), "--force"),
                              capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (tmp_path / f"group{i}" / "diloco_position.json").exists()
        inner.append(hyperclone.load_model(tmp_path / f"group{i}" / "final").state_dict())
    assert any(not torch.equal(inner[0][n], inner[1][n]) for n in start)  # the two halves of the data differ
    for name, w0 in start.items():
        assert torch.equal(first[name], second[name]), name  # one model again
        expected = w0 - 0.7 * (1 + 0.9) * ((w0 - inner[0][name]) + (w0 - inner[1][name])) / 2
        assert torch.allclose(first[name], expected, rtol=1e-5, atol=1e-6), name


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GROUP_OF_TWO = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]


def _launched(cmd: list[str], processes: int) -> list[str]:
    """A `hyperclone train` command as one process, or under accelerate launch as a group of two (each
    group on its own rendezvous port)."""
    if processes == 1:
        return cmd
    return [*GROUP_OF_TWO, "--main_process_port", str(_free_port()), "-m", "hyperclone.train", *cmd[2:]]


@pytest.mark.serial  # replica groups, a lighthouse and heartbeats: a race against a clock
def test_diloco_groups_of_two_processes_train_what_groups_of_one_do(tiny, tmp_path):
    """A replica group may be several processes (`accelerate launch`, data parallel inside the group, or
    the model sharded over them with --fsdp; rank r of each group averaging with rank r of the others):
    2 groups of 2 processes with a micro-batch of 1 each end with the model that 2 groups of 1 process
    with a batch of 2 train, up to rounding."""
    pytest.importorskip("torchft")
    from torchft.coordination import LighthouseServer

    model = tiny("llama", vocab_size=300)
    common = ["--diloco", "--sync-every", "3", "--max-steps", "6", "--replicas", "2", "--min-replicas", "2"]
    for name, processes, extra in (("one", 1, []), ("two", 2, []), ("fsdp", 2, ["--fsdp"])):
        lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
        try:
            groups = []
            for i in range(2):
                cmd = _launched(_train(model, tmp_path / f"{name}{i}", *common, *extra, "--replica-index", str(i),
                                       "--lighthouse", lighthouse.address(), "--batch-size", str(2 // processes)), processes)
                groups.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}{i}.log", "w"), env=ENV))
            for group in groups:
                group.wait(timeout=300)
        finally:
            lighthouse.shutdown()
        for i, group in enumerate(groups):
            assert group.returncode == 0, (tmp_path / f"{name}{i}.log").read_text()[-3000:]
    final = {f"{name}{i}": hyperclone.load_model(tmp_path / f"{name}{i}" / "final").state_dict()
             for name in ("one", "two", "fsdp") for i in (0, 1)}
    for name, w0 in hyperclone.load_model(model).state_dict().items():
        one = final["one0"][name]
        assert not torch.equal(one, w0), name
        for group in ("two", "fsdp"):
            assert torch.equal(final[f"{group}0"][name], final[f"{group}1"][name]), (group, name)  # one model again
            worst = (final[f"{group}0"][name] - one).abs().max().item()  # two processes sum gradients in another order
            assert worst <= 1e-3 * (one - w0).abs().max().item(), (group, name, worst)


def test_diloco_bad_settings_are_one_line(tiny, tmp_path):
    from tests.test_cli import run

    model = tiny("llama", vocab_size=300)
    base = ["train", "--model", str(model), "--data", DATA, "-o", str(tmp_path / "r"), "--diloco"]
    base += ["--lighthouse", "localhost:1"]
    for extra, words in ((["--max-steps", "10", "--sync-every", "3"], "multiple of --sync-every"),
                         (["--replicas", "2", "--replica-index", "2"], "below --replicas"),
                         (["--max-steps", "6", "--sync-every", "3", "--lighthouse", ""], "--lighthouse"),
                         (["--max-steps", "12", "--sync-every", "3", "--save-every", "4"], "--save-every 4")):
        result = run(*base, *extra)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_fsdp_model_loads_only_its_shards_and_computes_what_transformers_does(tiny, tmp_path):
    """`--fsdp`'s loader, on 2 processes (torchrun): transformers' model built on the meta device and
    sharded with fully_shard, each rank reading only its rows (its experts for fused MoE layers, through
    the renames transformers applies on load) — the logits equal transformers' own from_pretrained model's."""
    models = tmp_path / "models"
    models.mkdir()
    for family in FAMILIES:  # every family of the table: tied, fused, renamed, MLA, biased experts, learned positions...
        shutil.copytree(tiny(family), models / family)
    out = tmp_path / "found.json"
    worker = Path(__file__).parent / "fsdp_load_worker.py"
    done = subprocess.run([shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", str(worker), str(models), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for family, found in json.loads(out.read_text()).items():
        assert found["max_abs_diff"] <= 1e-4 and found["same_argmax"], (family, found)
        assert found["held"] <= found["total"] // 2 + found["total"] // 20, (family, found)  # about half on each rank


def test_muonclip_on_fsdp2_shards_equals_one_process(tmp_path):
    """2 processes over gloo (torchrun, as a user launches them), each holding half of every matrix
    (FSDP2's fully_shard) and half of each batch: after two MuonClip steps with QK-Clip scaling heads,
    the parameters are those of one process on the whole batch - Newton–Schulz saw every matrix whole
    (spread over the ranks), the max logits were all-reduced. llama (GQA) and deepseek_v3 (MLA, fused
    experts orthogonalised by halves)."""
    out = tmp_path / "found.json"
    worker = Path(__file__).with_name("fsdp_muonclip_worker.py")
    done = subprocess.run([shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", str(worker), str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    for family, found in json.loads(out.read_text()).items():
        assert found["sharded"] > 10, family  # the parameters really were DTensor shards
        assert found["max_logit"] > 2.0, family  # above tau: QK-Clip scaled heads on the shards
        assert abs(found["max_logit"] - found["reference_max_logit"]) <= 1e-5 * found["reference_max_logit"]
        assert found["worst_relative"] <= 1e-5, (family, found)  # float reduction order only


@pytest.mark.serial  # replica groups, a lighthouse and heartbeats: a race against a clock
@pytest.mark.parametrize("sharded", [False, True], ids=["one-process", "fsdp-two-processes"])
def test_a_killed_replica_group_rejoins_and_no_batch_counts_twice_or_never(sharded, tiny, tmp_path):
    """Group B is SIGKILLed during its inner steps. A goes on alone once the lighthouse has missed B's
    heartbeats (min replicas 1). B restarted with --resume takes A's weights, step and schedule from A
    (torchft's recovery) and reads its shard again from its last committed sync; both then end on the
    same last sync with one model. Data: each group drew, after its last heal (none: the start), exactly
    one batch per step from the position it healed back to - a sync that failed when B died is redone on
    the same batches, and A may itself heal from B at the start when B reaches its first sync first.
    Sharded: each group is 2 processes with the model FSDP2-sharded over them; B's every process is
    killed, and each of its ranks heals from the same rank of A (shard for shard)."""
    pytest.importorskip("torchft")
    from torchft.coordination import LighthouseServer

    # long enough for B to come back well before A's last sync: here a restarted B rejoined at about step 250
    # of 900 sharded (about 570 of 2000 in one process), so A could run ~3x faster than B restarts and still
    # wait for it; at 500 sharded steps the margin was 1.4x, and one run under load saw A finish first
    model, steps, processes = tiny("llama", vocab_size=300), 900 if sharded else 2000, 2 if sharded else 1
    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=1)
    logs = {}

    def group(i: int, *extra: str) -> subprocess.Popen:
        cmd = _train(model, tmp_path / f"group{i}", "--diloco", "--sync-every", "2", "--lighthouse", lighthouse.address(),
                     "--replicas", "2", "--replica-index", str(i), "--min-replicas", "1", "--save-every", "10",
                     "--diloco-timeout", "20", "--batch-size", str(2 // processes), *(["--fsdp"] if sharded else []), *extra)
        cmd[cmd.index("--max-steps") + 1] = str(steps)
        logs[i] = open(tmp_path / f"group{i}-{len(extra)}.log", "w")  # files, not pipes: a full pipe would stall a group
        return subprocess.Popen(_launched(cmd, processes), stdout=logs[i], stderr=subprocess.STDOUT, env=ENV)

    def kill(pid: int) -> None:
        """The process and everything it started (accelerate launch's workers): a lost machine."""
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
        os.kill(pid, signal.SIGKILL)
        for child in children:
            kill(int(child))

    def position(i: int) -> dict:
        path = tmp_path / f"group{i}" / "diloco_position.json"
        return json.loads(path.read_text()) if path.is_file() else {"step": -1}

    def wait_for(condition, what: str) -> None:
        deadline = time.time() + 180
        while not condition():
            assert time.time() < deadline and a.poll() is None, f"{what}: " + (tmp_path / "group0-0.log").read_text()[-3000:]
            time.sleep(0.05)

    a = b = None
    try:
        a, b = group(0), group(1)
        wait_for(lambda: position(1)["step"] >= 14, "B never committed a sync")
        kill(b.pid)
        b.wait()
        committed, a_at_kill = position(1), position(0)["step"]
        wait_for(lambda: position(0)["step"] >= a_at_kill + 20, "A did not go on alone")  # after the heartbeat timeout
        b = group(1, "--resume")
        for proc in (a, b):
            proc.wait(timeout=300)
    finally:
        for proc in (a, b):  # a failed wait leaves no group training on behind the test
            if proc is not None and proc.poll() is None:
                kill(proc.pid)
                proc.wait()
        lighthouse.shutdown()
        for fh in logs.values():
            fh.close()
    out = {i: (tmp_path / f"group{i}-{1 if i else 0}.log").read_text() for i in (0, 1)}
    assert a.returncode == 0 and b.returncode == 0, out[0][-3000:] + out[1][-3000:]
    joins = {i: [int(n) for n in re.findall(r"joined the other replica groups at step (\d+)", out[i])] for i in (0, 1)}
    healed_to = {i: [int(n) for n in re.findall(r"batch (\d+) of its shard", out[i])] for i in (0, 1)}
    assert joins[1] and healed_to[1] == [committed["batches"]], out[1][-3000:]  # B's own committed place
    assert joins[1][-1] > a_at_kill + 20  # B came back to a run that had gone on without it
    for i in (0, 1):
        assert len(joins[i]) == len(healed_to[i]), out[i][-3000:]  # every heal said where it went
        since, start = (joins[i][-1], healed_to[i][-1]) if joins[i] else (0, 0)
        assert position(i)["step"] == steps and position(i)["batches"] == start + steps - since, (i, position(i), joins, healed_to)
    first, second = (hyperclone.load_model(tmp_path / f"group{i}" / "final").state_dict() for i in range(2))
    assert all(torch.equal(first[n], second[n]) for n in first)
