"""Noise breaks the symmetry of the copies at the first step without changing step-0 logits."""
import pytest
import torch

import hyperclone
from tests.conftest import assert_preserved, one_adamw_step


def _copy_gaps(model, width):
    """Largest difference between copy 0 and copy 1 of q_proj's rows, and of down_proj's columns."""
    layer = model.model.layers[0]
    q = layer.self_attn.q_proj.weight.detach()
    down = layer.mlp.down_proj.weight.detach()
    rows, cols = q.shape[0] // width, down.shape[1] // width
    return (q[:rows] - q[rows : 2 * rows]).abs().max().item(), (down[:, :cols] - down[:, cols : 2 * cols]).abs().max().item()


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_copies_diverge_only_with_noise(noise, tiny, tmp_path):
    src = tiny("llama")
    out = hyperclone.grow(src, dict(width=2, noise=noise), tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out))  # step 0: same function either way
    model = hyperclone.load_model(out, dtype=torch.float32)
    one_adamw_step(model)
    q_gap, down_gap = _copy_gaps(model, 2)
    if noise:
        assert q_gap > 1e-4 and down_gap > 1e-4
    else:
        assert q_gap == 0.0 and down_gap == 0.0


def test_in_memory_grow_matches_written_checkpoint(tiny, tmp_path):
    src = tiny("qwen3")
    model = hyperclone.grow(src, "3x", progress=False)
    written = hyperclone.load_model(hyperclone.grow(src, "3x", tmp_path / "g", progress=False))
    for (name, a), (_, b) in zip(model.state_dict().items(), written.state_dict().items()):
        assert torch.equal(a, b), name
