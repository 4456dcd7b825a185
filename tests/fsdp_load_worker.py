"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): `fsdp_model` builds each family on
the meta device, shards it with FSDP2 and has each rank read only its rows from the safetensors files;
its logits are compared with transformers' own from_pretrained model. Rank 0 writes what it found as JSON."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from hyperclone.train.sharded import fsdp_model


def main(models: str, out: str) -> None:
    dist.init_process_group("gloo")
    found = {}
    for directory in sorted(Path(models).iterdir()):
        sharded, line = fsdp_model(directory, torch.device("cpu"))
        held = sum(p.to_local().numel() for p in sharded.parameters())  # before a forward leaves the root unsharded
        sharded.eval()  # as from_pretrained's model is: no dropout (OPT has some)
        whole = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        ids = torch.randint(0, whole.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = sharded(input_ids=ids).logits, whole(input_ids=ids).logits
        found[directory.name] = {"max_abs_diff": (a - b).abs().max().item(), "same_argmax": bool(torch.equal(a.argmax(-1), b.argmax(-1))),
                                 "held": held, "total": sum(p.numel() for p in whole.parameters()), "line": line}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(found))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # see fsdp_muonclip_worker.py: torch can abort in interpreter teardown


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
