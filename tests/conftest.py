"""Shared fixtures: tiny real checkpoints saved by transformers into temporary directories."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hyperclone.arch import DENSE_FAMILIES, MOE_LAYOUTS  # noqa: E402
from hyperclone.testing import save_tiny_model  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

FAMILIES = list(DENSE_FAMILIES)  # every dense entry of the family table
MOE_FAMILIES = list(MOE_LAYOUTS)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, dtype=torch.float32, seed=0, **config) -> directory of a saved random model (cached)."""
    cache: dict = {}

    def make(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
        key = (family, dtype, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"src-{family}")
            cache[key] = save_tiny_model(family, path / "model", dtype=dtype, seed=seed, **overrides)
        return cache[key]

    return make


def assert_preserved(result: dict) -> None:
    """The function-preservation bar: float32 logits within 1e-4 and identical argmax."""
    assert result["max_abs_diff"] <= 1e-4, result
    assert result["argmax_agreement"] == 1.0, result
    assert result["passed"], result


def one_adamw_step(model, seed: int = 3) -> None:
    """One real AdamW step on random tokens (symmetry-breaking tests)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(seed))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
