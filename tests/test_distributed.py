"""Training beyond one process: DiLoCo across replica groups on torchft (a real lighthouse, real
processes talking over gloo on the loopback)."""
import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

import hyperclone

DATA = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _train(model, out, *extra: str) -> list[str]:
    return [shutil.which("hyperclone"), "train", "--model", str(model), "--data", DATA, "-o", str(out), "--max-steps", "3",
            "--seq-len", "32", "--batch-size", "2", "--trackers", "none", "--optimizer", "adamw", "--lr", "3e-3", *extra]


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
    for i in range(2):  # each group's inner steps on their own
        done = subprocess.run(_train(model, tmp_path / f"inner{i}", "--replicas", "2", "--replica-index", str(i)),
                              capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    start, first, second, *inner = (hyperclone.load_model(path).state_dict() for path in
                                     [model] + [tmp_path / name / "final" for name in ("group0", "group1", "inner0", "inner1")])
    assert any(not torch.equal(inner[0][n], inner[1][n]) for n in start)  # the two halves of the data differ
    for name, w0 in start.items():
        assert torch.equal(first[name], second[name]), name  # one model again
        expected = w0 - 0.7 * (1 + 0.9) * ((w0 - inner[0][name]) + (w0 - inner[1][name])) / 2
        assert torch.allclose(first[name], expected, rtol=1e-5, atol=1e-6), name


def test_diloco_bad_settings_are_one_line(tiny, tmp_path):
    from tests.test_cli import run

    model = tiny("llama", vocab_size=300)
    base = ["train", "--model", str(model), "--data", DATA, "-o", str(tmp_path / "r"), "--diloco"]
    base += ["--lighthouse", "localhost:1"]
    for extra, words in ((["--max-steps", "10", "--sync-every", "3"], "multiple of --sync-every"),
                         (["--replicas", "2", "--replica-index", "2"], "below --replicas"),
                         (["--max-steps", "6", "--sync-every", "3", "--lighthouse", ""], "--lighthouse")):
        result = run(*base, *extra)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


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
