"""DiLoCo across replica groups over slow links, on torchft (not a home-made protocol).

Each replica group is one `hyperclone train --diloco` process, or several under `accelerate launch`
(data parallel inside the group, or the model sharded over them with --fsdp: torchft's DiLoCo averages
each rank's local shards, so rank r of every group must hold the same rows). It takes `--sync-every`
inner steps with its own optimizer (MuonClip or AdamW) on its own shard of the data. Then torchft's
Manager forms a quorum through the lighthouse, the groups average their pseudo-gradients (the weights'
change since the last sync), and an outer Nesterov SGD applies the average. A group that joins late,
or comes back after a failure, takes the current weights from a live peer (the Manager's recovery, fed
by `state_dict`/`load_state_dict`); `Committed` keeps each group's data position in step with what was
committed.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from hyperclone.errors import UserError


@contextmanager
def diloco(cfg, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, state_dict: Callable[[], dict],
           load_state_dict: Callable[[dict], None], rank: int = 0, world_size: int = 1) -> Iterator[object]:
    """The DiLoCo context around the training loop (torchft.local_sgd.DiLoCo with its Manager).

    A group may be several processes (`accelerate launch`, data parallel inside the group): each rank
    has its own Manager client on the group's store, and rank r averages with rank r of the other groups."""
    # torchft's Rust side logs five INFO lines per outer sync to stderr, over the progress bar; its
    # warnings and errors stay (RUST_LOG=info brings the rest back)
    os.environ.setdefault("RUST_LOG", "warn")
    try:
        from torchft import Manager, ProcessGroupGloo
        from torchft.local_sgd import DiLoCo
    except ImportError:
        raise UserError("--diloco needs torchft: pip install \"hyperclone[distributed]\"") from None
    timeout = dt.timedelta(seconds=cfg.diloco_timeout)
    store, store_host, store_port = _group_store(rank, world_size)  # `store` lives as long as the run
    pg = ProcessGroupGloo(timeout=timeout)
    manager = Manager(
        pg=pg, load_state_dict=load_state_dict, state_dict=state_dict,
        min_replica_size=cfg.min_replicas, use_async_quorum=False,  # DiLoCo requires a synchronous quorum
        # every group starts from the same --model: with torchft's default step-0 sync, all but one group
        # would "heal" at the first outer step, their pseudo-gradients dropped from its average
        init_sync=False,
        quorum_retries=5,  # a quorum formed just as a peer died or left fails once; the next one does without it
        timeout=timeout, quorum_timeout=timeout, connect_timeout=timeout,
        store_addr=store_host, store_port=store_port, rank=rank, world_size=world_size,
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
        pg.shutdown()  # its gloo group released now, not by the interpreter's teardown


def _group_store(rank: int, world_size: int):
    """This group's own rendezvous for its Manager: a TCPStore that its rank 0 serves on a free port,
    the port passed to the other ranks over the group's own process group (Accelerate's)."""
    from torch.distributed import TCPStore

    host = os.environ.get("MASTER_ADDR", "localhost")  # set by the launcher when the group has several ranks
    store = TCPStore(host, 0, is_master=True, wait_for_workers=False) if rank == 0 else None
    port = [store.port if store is not None else None]
    if world_size > 1:
        torch.distributed.broadcast_object_list(port, src=0)
    return store, host, port[0]


def _http(address: str) -> str:
    return address if address.startswith("http") else f"http://{address}"


class Committed:
    """This group's place as of its last committed outer sync, so that no batch counts twice or never.

    torchft decides each outer sync for all groups together. When one fails (a group died during it),
    DiLoCo puts the weights back to the last committed ones; `after_step` then puts the step, schedule
    and data position back too, and the lost inner steps are redone on the same batches. A group that
    heals from a peer (restarted after a kill, or late) takes the peer's weights, step and schedule, and
    `healed` sends it back to its own last committed place in its own shard: kept on disk at every commit,
    so a SIGKILL between syncs costs the inner steps since then and never their data.
    """

    FILE = "diloco_position.json"
    KEYS = ("step", "tokens", "batches", "decay_batches")

    def __init__(self, run, manager):
        self.run, self.manager, self.path = run, manager, Path(run.out) / self.FILE
        self.seen, self.inner_steps, self.schedule = manager.current_step(), 0, run.scheduler.state_dict()
        self.position = {k: getattr(run.state, k) for k in self.KEYS}
        if run.cfg.resume and self.path.is_file():  # written after the checkpoint resumed from: further on
            self.position = json.loads(self.path.read_text())

    def after_step(self, stepped: bool) -> bool:
        """Called after every training step; True when an outer sync failed and the step was undone."""
        self.inner_steps += stepped
        if self.manager.current_step() != self.seen:  # committed (torchft's step moves only then)
            self.seen, self.inner_steps = self.manager.current_step(), 0
            self._commit()
            return False
        if self.inner_steps < self.run.cfg.sync_every:
            return False
        self.inner_steps = 0
        self._rollback()
        return True

    def healed(self) -> None:
        """A peer's weights, step and schedule were just loaded: read this group's shard again from its
        last committed position (the batches since then went into weights that were replaced)."""
        state = self.run.state
        state.batches, state.decay_batches = self.position["batches"], self.position["decay_batches"]
        self.run.feed.skip(state)
        self.run.log.say(f"data position from this group's last committed sync (step {self.position['step']}): "
                         f"batch {state.batches} of its shard")

    def _commit(self) -> None:
        self.position = {k: getattr(self.run.state, k) for k in self.KEYS}
        self.schedule = self.run.scheduler.state_dict()
        if not self.run.accelerator.is_main_process:  # every rank of a group is at the same place
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.position))
        os.replace(tmp, self.path)

    def _rollback(self) -> None:
        run, step = self.run, self.run.state.step
        for key in self.KEYS:
            setattr(run.state, key, self.position[key])
        run.scheduler.load_state_dict(self.schedule)
        run.feed.skip(run.state)
        run.log.drop_after(run.state.step)
        run.log.say(f"the outer sync after step {step} failed (a replica group was lost during it): back to step "
                    f"{run.state.step}, the last committed one; its weights are back, and the steps since are redone on the same data")
