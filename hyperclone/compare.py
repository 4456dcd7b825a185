"""Side-by-side greedy generation from a source and its grown model: what a person checks first."""
from __future__ import annotations

import os

import torch

from hyperclone.display import Comparison
from hyperclone.errors import UserError
from hyperclone.io.reader import open_checkpoint
from hyperclone.loading import load_model
from hyperclone.train.data import load_tokenizer
from hyperclone.verify import as_model_directory


def _greedy(model, ids: list[int], steps: int) -> list[int]:
    """Argmax continuation, one full forward per token: plain and exact, no cache or sampling settings involved."""
    tokens = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(input_ids=tokens).logits[0, -1].argmax()
            tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    return tokens[0, len(ids):].tolist()


def compare(source: str | os.PathLike, grown: str | os.PathLike, prompt: str = "Hello", max_new_tokens: int = 20) -> Comparison:
    """Greedy continuations of `prompt` by both models in float32, decoded with the source's tokenizer (UTF-8
    bytes when it has none). A grown model computes its source's function, so the texts agree; with noise
    off they are identical by construction."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    generated, tokenizer = [], None
    for path, role in ((source, "source"), (grown, "grown model")):
        ckpt = open_checkpoint(path, role=role)
        with as_model_directory(ckpt) as directory:
            model = load_model(directory, dtype=torch.float32, reference=True).eval()
            tokenizer = tokenizer or load_tokenizer(ckpt.directory, model.config.vocab_size)
            ids = tokenizer.encode(prompt) or [tokenizer.eos]
            generated.append(_greedy(model, ids, max_new_tokens))
        ckpt.close()
    return Comparison(prompt=prompt, max_new_tokens=max_new_tokens, source_tokens=generated[0], grown_tokens=generated[1],
                      source_text=tokenizer.decode(generated[0]), grown_text=tokenizer.decode(generated[1]),
                      identical=generated[0] == generated[1])
