"""DiLoCo across replica groups over slow links, on torchft (not a home-made protocol).

Each replica group is one `hyperclone train --diloco` process. It takes `--sync-every` inner steps
with its own optimizer (MuonClip or AdamW) on its own shard of the data. Then torchft's Manager forms
a quorum through the lighthouse, the groups average their pseudo-gradients (the weights' change since
the last sync), and an outer Nesterov SGD applies the average. A group that joins late, or comes back
after a failure, takes the current weights from a live peer (the Manager's recovery, fed by
`state_dict`/`load_state_dict` below).
"""
from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from hyperclone.errors import UserError


@contextmanager
def diloco(cfg, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, state_dict: Callable[[], dict],
           load_state_dict: Callable[[dict], None]) -> Iterator[object]:
    """The DiLoCo context around the training loop (torchft.local_sgd.DiLoCo with its Manager)."""
    try:
        from torch.distributed import TCPStore
        from torchft import Manager, ProcessGroupGloo
        from torchft.local_sgd import DiLoCo
    except ImportError:
        raise UserError("--diloco needs torchft: pip install \"hyperclone[distributed]\"") from None
    timeout = dt.timedelta(seconds=cfg.diloco_timeout)
    store = TCPStore("localhost", 0, is_master=True, wait_for_workers=False)  # this group's own rendezvous
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timeout), load_state_dict=load_state_dict, state_dict=state_dict,
        min_replica_size=cfg.min_replicas, use_async_quorum=False,  # DiLoCo requires a synchronous quorum
        # every group starts from the same --model: with torchft's default step-0 sync, all but one group
        # would "heal" at the first outer step, their pseudo-gradients dropped from its average
        init_sync=False,
        timeout=timeout, quorum_timeout=timeout, connect_timeout=timeout,
        store_addr="localhost", store_port=store.port, rank=0, world_size=1,
        replica_id=cfg.replica_id or f"group-{cfg.replica_index}", lighthouse_addr=_http(cfg.lighthouse),
        port=0, hostname=cfg.hostname,
    )
    outer = torch.optim.SGD(model.parameters(), lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=True)
    try:
        with DiLoCo(manager, [model], inner_optimizer, outer, sync_every=cfg.sync_every, backup_device=torch.device("cpu"),
                    pin_memory=False):
            yield manager
    finally:
        manager.shutdown(wait=False)


def _http(address: str) -> str:
    return address if address.startswith("http") else f"http://{address}"
