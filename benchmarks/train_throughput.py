"""Training throughput against plain PyTorch, measured in one run.

1. tokens/s of `hyperclone.train` (AdamW, so the optimizers are the same) against a plain PyTorch
   loop with torch.optim.AdamW on the same model, data blocks and batch size;
2. one MuonClip step against torch.optim.Muon (hidden matrices) + torch.optim.AdamW (the rest) on the
   same parameters and gradients.

    python benchmarks/train_throughput.py [--steps 30] [--hidden 256] [--layers 4]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch


def plain_loop(model_dir: Path, blocks, steps: int, batch: int, seq: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rates = []
    for step in range(steps):
        ids = torch.tensor([blocks[(step * batch + i) % len(blocks)]["input_ids"] for i in range(batch)])
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        rates.append(batch * seq / (time.perf_counter() - start))
    return statistics.median(rates[3:])


def optimizer_steps(model_dir: Path, repeats: int) -> dict:
    from hyperclone.loading import load_model
    from hyperclone.train.optim import build_optimizer, split_parameters

    model = load_model(model_dir, dtype=torch.float32)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ours = build_optimizer(model, "muon", lr=1e-3)
    muon, halves, decay, no_decay = split_parameters(model)
    ref_muon = torch.optim.Muon([p for _, p in muon], lr=1e-3, adjust_lr_fn="match_rms_adamw")
    ref_adam = torch.optim.AdamW([p for _, p in decay + no_decay + halves], lr=1e-3)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    t_ours = timed(ours.step)
    t_ref = timed(lambda: (ref_muon.step(), ref_adam.step()))
    return {"muonclip_step_s": t_ours, "torch_muon_plus_adamw_step_s": t_ref, "ratio_ours_to_torch": t_ours / t_ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import hyperclone
    from hyperclone.testing import save_tiny_model
    from hyperclone.train.data import load_corpus, load_tokenizer, pack

    data = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model("llama", Path(tmp) / "model", vocab_size=300, hidden_size=args.hidden,
                                    intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
                                    num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                                    max_position_embeddings=args.seq)
        blocks = pack(load_corpus(data), load_tokenizer(model_dir, 300), args.seq)
        hyperclone.train(model=str(model_dir), data=data, out=str(Path(tmp) / "run"), max_steps=args.steps, optimizer="adamw",
                         seq_len=args.seq, batch_size=args.batch, trackers="none", progress=False, eval_fraction=0.0,
                         eval_batches=0)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        ours = statistics.median([r["tokens_per_s"] for r in records if "tokens_per_s" in r][3:])
        plain = plain_loop(model_dir, blocks, args.steps, args.batch, args.seq)
        steps = optimizer_steps(model_dir, repeats=10)
    from benchmarks_machine import machine  # noqa: E402  (shared helper beside this script)

    result = {
        "benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "model": {"family": "llama", "hidden": args.hidden, "layers": args.layers, "batch": args.batch, "seq_len": args.seq},
        "hyperclone_train_tokens_per_s": round(ours), "plain_pytorch_adamw_tokens_per_s": round(plain),
        "ratio_ours_to_plain": round(ours / plain, 3), **{k: round(v, 5) for k, v in steps.items()},
    }
    print(json.dumps(result, indent=2))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
