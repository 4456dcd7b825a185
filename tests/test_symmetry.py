"""Noise breaks the symmetry of the copies at the first step without changing step-0 logits."""
import pytest
import torch

import hyperclone
from hyperclone.arch import Role, family_for
from tests.conftest import FAMILIES, assert_preserved, one_adamw_step


def _copy_gaps(model, family: str, width: int) -> tuple[float, float]:
    """Largest difference between the in-columns of residual copies 0 and 1 of the first attention
    reader, and between FFN copies 0 and 1 of the down projection (modules named by the family table)."""
    fam = family_for(family)
    layer = model.get_submodule(fam.layer_prefix + "0")
    reader = layer.get_submodule(fam.modules(Role.READ_ATTN, Role.QKV_FUSED)[0]).weight.detach()
    down = layer.get_submodule(fam.modules(Role.WRITE_FFN)[0]).weight.detach()

    def gap(w):
        cols = w.shape[1] // width
        return (w[:, :cols] - w[:, cols : 2 * cols]).abs().max().item()

    return gap(reader), gap(down)


@pytest.mark.parametrize("noise", [0.0, 0.01])
@pytest.mark.parametrize("family", FAMILIES)
def test_copies_diverge_only_with_noise(family, noise, tiny, tmp_path):
    src = tiny(family)
    out = hyperclone.grow(src, dict(width=2, noise=noise), tmp_path / "g", progress=False)
    assert_preserved(hyperclone.verify(src, out))  # step 0: same function either way
    model = hyperclone.load_model(out, dtype=torch.float32)
    one_adamw_step(model)
    reader_gap, down_gap = _copy_gaps(model, family, 2)
    if noise:
        assert reader_gap > 1e-4 and down_gap > 1e-4
    else:
        assert reader_gap == 0.0 and down_gap == 0.0


def test_in_memory_grow_matches_written_checkpoint(tiny, tmp_path):
    src = tiny("qwen3")
    model = hyperclone.grow(src, "3x", progress=False)
    written = hyperclone.load_model(hyperclone.grow(src, "3x", tmp_path / "g", progress=False))
    for (name, a), (_, b) in zip(model.state_dict().items(), written.state_dict().items()):
        assert torch.equal(a, b), name
