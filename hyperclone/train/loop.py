"""The continued-pretraining loop: Accelerate, MuonClip or AdamW, WSD, MoE balancing, exact resume.

One process or many: `accelerate launch -m hyperclone.train ...` runs the same code; the global
batch is batch_size x processes x grad_accum, and the data order depends on the seed alone.

`train` reads as a conductor: `setup` builds the run's parts (a `Run`), `train_step` makes one
optimizer step and returns its record, and the `Checkpointer` and `RunDirectory` components own
checkpoints and the output directory.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from hyperclone.display import TrainResult
from hyperclone.errors import UserError
from hyperclone.io.resolve import resolve_source
from hyperclone.kernels.liger import apply_liger
from hyperclone.progress import stderr
from hyperclone.train.checkpoint import Checkpointer
from hyperclone.train.config import TrainConfig, make_config
from hyperclone.train.data import Source, load_tokenizer, mixed_blocks, mixture
from hyperclone.train.optim import build_optimizer
from hyperclone.train.qkclip import QKClip
from hyperclone.train.rundir import RunDirectory
from hyperclone.train.schedule import build_scheduler, decay_start_step

EXPERT_LOAD_EVERY = 10  # steps between per-expert load records in metrics.jsonl (large MoEs make them long)


@dataclass
class TrainState:
    """What a checkpoint must carry besides the tensors: where the run is, in steps, tokens and data."""

    step: int = 0
    tokens: int = 0
    batches: int = 0  # micro-batches drawn so far, skipped steps included: the data position
    decay_batches: int = 0  # the same, from --decay-data once the decay has started
    skipped_steps: int = 0
    bad_in_a_row: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


@dataclass
class Run:
    """Everything one training run is made of, built by `setup` and driven by `train`."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    feed: "_Feed"
    eval_loader: Any
    balance: Any
    qk: QKClip | None
    checkpointer: Checkpointer
    rundir: RunDirectory
    log: "_Log"
    state: TrainState
    tokens_per_step: int


def _load_model(cfg: TrainConfig, accelerator, say):
    """The model to train, after the same reader checks grow and verify make (truncation, config vs weights)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hyperclone.consistency import check_config_matches_weights
    from hyperclone.io.reader import open_checkpoint

    path = Path(cfg.model)
    if not (path / "config.json").exists():
        raise UserError(f"{cfg.model} is not a model directory (no config.json): give a grown or saved checkpoint")
    config = AutoConfig.from_pretrained(str(path))
    heads = config.architectures or []
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (heads and not any(h.endswith(("ForCausalLM", "LMHeadModel")) for h in heads)):
        kind = heads[0] if heads else config.model_type
        raise UserError(f"{cfg.model} holds a {kind}, which is not a causal language model")
    ckpt = open_checkpoint(path, role="model")
    try:
        check_config_matches_weights(ckpt, "the model")
    finally:
        ckpt.close()
    if cfg.fsdp:
        if accelerator.num_processes < 2:
            raise UserError("--fsdp shards the model over several processes: start it with `accelerate launch --num_processes N`")
        from hyperclone.train.sharded import fsdp_model

        model, line = fsdp_model(path, accelerator.device, cfg.mixed_precision, cfg.reshard_after_forward, _layers(cfg))
        say(line)
        return model
    from hyperclone.loading import load_model

    model = load_model(path, dtype=torch.float32)
    kernels = apply_liger(model, fused_experts=cfg.mixed_precision != "no")  # on a GPU, for the families Liger supports
    if kernels:
        say(kernels)
    _layers(cfg)(model)
    return model


def _layers(cfg: TrainConfig):
    """What happens to each decoder layer before training (and, under FSDP2, before sharding): activation
    checkpointing, then compilation, the order torchtitan applies them in."""
    from hyperclone.loading import checkpoint_activations, compile_layers

    def prepare(model) -> None:
        if cfg.activation_checkpointing:
            checkpoint_activations(model)
        if cfg.compile:
            compile_layers(model)

    return prepare


class _Batches:
    """Endless, deterministic iteration over a dataloader; `skip` resumes at a position."""

    def __init__(self, loader, accelerator):
        self.loader, self.accelerator, self.iterator, self.epoch = loader, accelerator, None, 0

    def skip(self, count: int) -> None:
        try:
            length = len(self.loader)
        except TypeError:  # streaming: no length, so skip by reading
            self.iterator = None
            for _ in range(count):
                self.next()
            return
        self.epoch, offset = divmod(count, length)
        self.iterator = iter(self.accelerator.skip_first_batches(self.loader, offset) if offset else self.loader)

    def next(self):
        if self.iterator is None:
            self.iterator = iter(self.loader)
        try:
            return next(self.iterator)
        except StopIteration:
            self.epoch += 1
            self.iterator = iter(self.loader)
            return next(self.iterator)


def _collate(rows):
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows], dtype=torch.long),
            "source": torch.tensor([r["source"] for r in rows], dtype=torch.long)}


class _Feed:
    """Training batches: the --data mixture, then --decay-data's from the decay's first step on (MiniCPM's
    two-stage pretraining). Each has its own position in TrainState, so resume is exact in either phase."""

    def __init__(self, main: _Batches, names: list[str], decay: _Batches | None, decay_names: list[str], decay_start: int):
        self.main, self.names, self.decay, self.decay_names, self.decay_start = main, names, decay, decay_names, decay_start

    def in_decay(self, state: TrainState) -> bool:
        return self.decay is not None and state.step >= self.decay_start

    def skip(self, state: TrainState) -> None:
        self.main.skip(state.batches)
        if self.decay is not None:
            self.decay.skip(state.decay_batches)

    def next(self, state: TrainState):
        """The next micro-batch and the names of its mixture's sources."""
        if self.in_decay(state):
            state.decay_batches += 1
            return self.decay.next(), self.decay_names
        state.batches += 1
        return self.main.next(), self.names


def _trackers(cfg: TrainConfig) -> str | None:
    """The Accelerate tracker, or None when it is off or tensorboard (the default) is not installed."""
    trackers = None if cfg.trackers == "none" else cfg.trackers
    if trackers == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        return None
    return trackers


def _data(cfg: TrainConfig, model, accelerator, log: "_Log", sources: list[Source], decay_sources: list[Source]):
    """Train and eval dataloaders of packed blocks, the same on every process; a decay-phase train
    loader when --decay-data is given (None otherwise). Eval always uses --data's held-out blocks, so
    the eval curve stays comparable across the switch."""
    tokenizer = load_tokenizer(cfg.model, model.config.vocab_size)
    settings = (tokenizer, cfg.seq_len, cfg.text_field, cfg.streaming, cfg.seed, cfg.eval_fraction, cfg.split_seed)
    with accelerator.main_process_first():
        train_blocks, eval_blocks = mixed_blocks(sources, *settings)
        if cfg.replicas > 1:  # DiLoCo: each replica group trains on its own shard (eval stays common)
            train_blocks = train_blocks.shard(num_shards=cfg.replicas, index=cfg.replica_index)
        decay_blocks = mixed_blocks(decay_sources, *settings)[0] if decay_sources else None
    log.note(f"tokenizer: {tokenizer.description}")
    loaders = []
    for blocks, setting in ((train_blocks, "--data"), (decay_blocks, "--decay-data")):
        if blocks is None:
            loaders.append(None)
            continue
        if not cfg.streaming and len(blocks) < cfg.batch_size * accelerator.num_processes:
            raise UserError(f"{setting} gives {len(blocks)} training blocks, fewer than one global batch: give more text")
        loaders.append(torch.utils.data.DataLoader(blocks, batch_size=cfg.batch_size, shuffle=False, drop_last=True,
                                                   collate_fn=_collate, generator=_own_generator(cfg.seed)))
    eval_loader = torch.utils.data.DataLoader(eval_blocks, batch_size=cfg.batch_size, shuffle=False, collate_fn=_collate,
                                              generator=_own_generator(cfg.seed))
    return loaders[0], loaders[1], eval_loader


def _own_generator(seed: int) -> torch.Generator:
    """A loader's own generator: every iterator a DataLoader starts draws a seed, from torch's global
    generator unless given one. Drawn from there, the draws of an eval pass, or of the iterator a
    resumed run starts at a different step, would shift every later dropout mask, and a resumed run
    with dropout would no longer take the steps an uninterrupted one takes."""
    return torch.Generator().manual_seed(seed)


def _balance(cfg: TrainConfig, model):
    from hyperclone.arch import MOE_LAYOUTS
    from hyperclone.train.moe_balance import MoeBalance

    if model.config.model_type not in MOE_LAYOUTS or cfg.moe_balance == "none":
        return None
    try:
        return MoeBalance(model, cfg.moe_balance, cfg.aux_loss_coef, cfg.z_loss_coef, cfg.bias_update_rate)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def setup(cfg: TrainConfig) -> Run:
    """Check the output, lock it, and build model, data, optimizer, schedule and checkpoints (restored on resume).

    A failure here removes a run directory this call created: nothing is left of a run that never stepped.
    """
    from accelerate import Accelerator
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    # hf://org/name[@rev] becomes its local snapshot here, through the resolver grow and verify use
    source = cfg.model
    model_dir = resolve_source(source, "model")
    out = Path(cfg.out or f"{Path(source.split('@')[0]).name}-trained")
    cfg = replace(cfg, model=str(model_dir))
    rundir = RunDirectory(out, model_dir if (model_dir / "config.json").is_file() else None, cfg.resume, cfg.force)
    if cfg.decay_from:
        Checkpointer.require_intact(Path(cfg.decay_from))
    trackers = _trackers(cfg)
    if cfg.fsdp:  # hyperclone shards the model itself (train/sharded.py): Accelerate's FSDP plugin must not wrap it again
        os.environ["ACCELERATE_USE_FSDP"] = "false"
    # cpu=True without an accelerator: then processes started by torchrun / `accelerate launch --multi_gpu`
    # form a gloo group (Accelerate picks MULTI_CPU only when told it runs on the CPU).
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              log_with=trackers, project_dir=str(out), cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    log = _Log(out, main, cfg.progress)
    if main:
        rundir.open({**cfg.as_dict(), "model": source})
    try:
        accelerator.wait_for_everyone()
        run = _build(cfg, out, accelerator, rundir, log, trackers)
    except BaseException:
        rundir.close(failed_before_training=True)
        raise
    return run


def _build(cfg: TrainConfig, out: Path, accelerator, rundir: RunDirectory, log: "_Log", trackers: str | None) -> Run:
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    checkpointer = Checkpointer(out, accelerator, cfg.save_every, cfg.keep, log.say, cfg.checkpoint_format, cfg.async_checkpoint)
    # a DiLoCo group restarted before its first checkpoint takes its weights from a live group anyway
    diloco_fresh = cfg.diloco and cfg.resume and not checkpointer.complete()
    start_from = checkpointer.resume_point() if cfg.resume and not diloco_fresh else (Path(cfg.decay_from) if cfg.decay_from else None)
    model = _load_model(cfg, accelerator, log.say)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cfg.seq_len > limit:
        raise UserError(f"--seq-len {cfg.seq_len} is beyond the model's max_position_embeddings {limit}")
    sources = mixture(cfg.data)
    decay_sources = mixture(cfg.decay_data, "--decay-data") if cfg.decay_data else []
    loader, decay_loader, eval_loader = _data(cfg, model, accelerator, log, sources, decay_sources)
    balance = _balance(cfg, model)
    expert_scale = math.sqrt(balance.spec.top_k / balance.spec.experts) if balance is not None and cfg.expert_lr == "hunyuan" else 1.0
    qk = QKClip(model, cfg.qk_clip_tau) if cfg.optimizer == "muonclip" else None
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, expert_scale, qk)
    state = TrainState.from_dict(Checkpointer.state_of(start_from)) if start_from else TrainState()
    warmup = cfg.warmup_steps()
    # a branch decays from its checkpoint's step, also when it is itself resumed later
    branch = Checkpointer.state_of(Path(cfg.decay_from))["step"] if cfg.decay_from else None
    scheduler = build_scheduler(optimizer, cfg.max_steps, warmup, cfg.schedule, cfg.decay_fraction, cfg.decay_shape,
                                cfg.min_lr_ratio, branch)
    # The scheduler stays out of prepare(): Accelerate would step it once per process per step, and the
    # schedule is defined in optimizer steps. It is still saved and restored with the checkpoints.
    if cfg.fsdp:  # already sharded: Accelerate would wrap it in DDP, which refuses DTensor parameters
        optimizer, loader, eval_loader = accelerator.prepare(optimizer, loader, eval_loader)
    else:
        model, optimizer, loader, eval_loader = accelerator.prepare(model, optimizer, loader, eval_loader)
    decay_loader = accelerator.prepare(decay_loader) if decay_loader is not None else None
    accelerator.register_for_checkpointing(scheduler)
    checkpointer.track(model, optimizer, scheduler, Path(cfg.model))
    if start_from is not None:
        checkpointer.load(start_from)
        if cfg.resume:
            log.drop_after(state.step)
        (log.say if cfg.resume else log.note)(f"{'resumed' if cfg.resume else 'decay branched'} from {start_from} at step {state.step}")
        if cfg.decay_from and not cfg.resume:
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](state.step)
    if trackers:
        accelerator.init_trackers("hyperclone", config={k: v for k, v in cfg.as_dict().items() if isinstance(v, (int, float, str, bool))})
    feed = _Feed(_Batches(loader, accelerator), [s.path for s in sources],
                 _Batches(decay_loader, accelerator) if decay_loader is not None else None, [s.path for s in decay_sources],
                 decay_start_step(cfg.max_steps, warmup, cfg.decay_fraction, branch))
    feed.skip(state)
    return Run(cfg, out, accelerator, model, optimizer, scheduler, feed, eval_loader, balance, qk, checkpointer, rundir,
               log, state, cfg.tokens_per_step(accelerator.num_processes))


def train_step(run: Run) -> dict | None:
    """One optimizer step over grad_accum micro-batches; its metrics record, or None when the loss was
    not finite and the step was skipped (the data it used stays used, so resume stays exact)."""
    cfg, acc, state, optimizer = run.cfg, run.accelerator, run.state, run.optimizer
    started = time.perf_counter()
    step_lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
    run.model.train()
    losses, finite, grad_norm, drawn = [], True, None, None
    for _ in range(cfg.grad_accum):
        batch, names = run.feed.next(state)
        counts = torch.bincount(batch["source"].cpu(), minlength=len(names))
        drawn = counts if drawn is None else drawn + counts
        with acc.accumulate(run.model):
            with run.balance.recording() if run.balance else nullcontext():
                loss = run.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
            extra = run.balance.take_loss() if run.balance else None
            total = loss + extra if extra is not None else loss
            losses.append(loss.detach())
            finite = finite and bool(torch.isfinite(acc.reduce(total.detach(), "sum")))
            acc.backward(total)
            if acc.sync_gradients and cfg.grad_clip:
                grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            if acc.sync_gradients and finite:
                optimizer.step()
                run.scheduler.step()
            optimizer.zero_grad()
    if not finite:
        _skip(run)
        return None
    state.bad_in_a_row = 0
    state.step += 1
    state.tokens += run.tokens_per_step
    load = run.balance.end_step(lambda t: acc.reduce(t.to(acc.device), "sum").cpu()) if run.balance else None
    record = {
        "step": state.step, "tokens": state.tokens, "loss": float(acc.reduce(torch.stack(losses).mean(), "mean")),
        "lr": step_lr, "grad_norm": _number(grad_norm),
        "tokens_per_s": run.tokens_per_step / (time.perf_counter() - started),
        "max_attn_logit": run.qk.last_max if run.qk is not None else None,
        "data": dict(zip(names, acc.reduce(drawn.to(acc.device), "sum").cpu().tolist())),  # blocks per source, all processes
        "peak_memory": _peak_memory(acc),
    }
    if load is not None and (state.step % EXPERT_LOAD_EVERY == 0 or state.step == cfg.max_steps):
        record["expert_load"] = load  # tokens per expert this step, per MoE layer
    return record


def _peak_memory(acc) -> int:
    """The largest process's peak memory so far, in bytes: what CUDA allocated on a GPU, resident memory on
    a CPU (which also counts Python, torch and mapped checkpoint pages). The largest, because that is the
    process that runs out first."""
    from hyperclone.memory import peak_resident_memory

    mine = torch.cuda.max_memory_allocated(acc.device) if acc.device.type == "cuda" else peak_resident_memory()
    return int(acc.gather(torch.tensor([mine], device=acc.device)).max())


def _number(value) -> float | None:
    """A float from a tensor that may be a DTensor (FSDP2's gradient norm) or None."""
    if value is None:
        return None
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def _skip(run: Run) -> None:
    state = run.state
    state.skipped_steps += 1
    state.bad_in_a_row += 1
    if run.qk is not None:
        run.qk.reset()  # the skipped step's logits are discarded with it
    run.log.say(f"step {state.step + 1}: loss is not finite, step skipped ({state.bad_in_a_row} in a row)")
    if state.bad_in_a_row >= run.cfg.max_bad_steps:
        raise UserError(f"the loss was not finite for {run.cfg.max_bad_steps} steps in a row (step {state.step + 1}): "
                        "lower --lr, check the data, or resume from the last checkpoint")


def _evaluate(run: Run) -> float | None:
    """Mean loss over at most eval_batches held-out batches, logged at the current step."""
    model, acc = run.model, run.accelerator
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(run.eval_loader):
            if i >= run.cfg.eval_batches:
                break
            losses.append(model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.detach())
    value = float(acc.reduce(torch.stack(losses).mean(), "mean")) if losses else None
    run.log.metrics({"step": run.state.step, "tokens": run.state.tokens, "eval_loss": value})
    acc.log({"eval_loss": value}, step=run.state.step)
    return value


def train(config: TrainConfig | None = None, *, recipe: str | None = None, **settings) -> dict:
    """Continue pretraining `model` on `data`; returns the final figures. See TrainConfig for settings."""
    cfg = config or make_config(recipe, **settings)
    run = setup(cfg)
    try:
        state, last_eval = run.state, None
        if cfg.eval_at_start and state.step == 0:
            _evaluate(run)
        _stable_note(run)
        run.log.start(cfg.max_steps, state.step)
        with _replica_groups(run) as replica:
            while state.step < cfg.max_steps:
                record = train_step(run)
                if replica is not None and replica.after_step(record is not None):
                    continue  # a failed outer sync: back at the last committed one
                if record is None:
                    continue
                run.log.metrics(record)
                run.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.step)
                evaluated = cfg.eval_every and state.step % cfg.eval_every == 0
                if evaluated:
                    last_eval = _evaluate(run)
                if cfg.save_stable and state.step == run.feed.decay_start:  # before a checkpoint at this step: see _stable_note
                    _export(run, "stable", _stable_result(run, last_eval if evaluated else _evaluate(run)))
                if run.checkpointer.due(state.step, cfg.max_steps):
                    run.checkpointer.save(asdict(state))
                run.log.advance(record)
        run.log.stop()
        if last_eval is None or (cfg.eval_every and cfg.max_steps % cfg.eval_every):
            last_eval = _evaluate(run)
        if cfg.save_every:
            run.checkpointer.save(asdict(state))
        run.checkpointer.wait()  # an asynchronous checkpoint still writing is finished and sealed
        stable = run.out / "stable"
        result = TrainResult(out=str(run.out), steps=state.step, tokens=state.tokens, loss=run.log.last.get("loss"),
                             eval_loss=last_eval, skipped_steps=state.skipped_steps,
                             stable=str(stable) if cfg.save_stable and stable.is_dir() else None)
        _export(run, "final", result)
        run.accelerator.end_training()
    finally:
        run.rundir.close()
    if cfg.push_to_hub:
        from hyperclone.hub import push

        push(run.out / "final", cfg.push_to_hub, private=cfg.private)
    return result


@contextmanager
def _replica_groups(run: Run):
    """DiLoCo's context when --diloco (the outer syncs happen inside the optimizer's steps), else None.

    What a live group hands one that (re)joins: weights, optimizer, schedule and the step, so both end
    together. Not the data position: each group reads its own shard, and keeps its own place in it."""
    if not run.cfg.diloco:
        yield None
        return
    from hyperclone.train.diloco import Committed, diloco

    model, inner = run.accelerator.unwrap_model(run.model), run.optimizer.optimizer

    def state_dict() -> dict:
        return {"model": model.state_dict(), "optimizer": inner.state_dict(), "schedule": run.scheduler.state_dict(),
                "step": run.state.step}

    def load(state: dict) -> None:
        model.load_state_dict(state["model"])
        inner.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["schedule"])
        if state["step"] != run.state.step:
            run.log.say(f"joined the other replica groups at step {state['step'] + 1} with a live group's weights "
                        f"(this group was at step {run.state.step + 1})")
        run.state.step = state["step"]
        replica.healed()

    replica = None  # set before the first sync, the earliest a peer's state can arrive
    acc = run.accelerator
    with diloco(run.cfg, model, inner, state_dict, load, acc.process_index, acc.num_processes) as manager:
        replica = Committed(run, manager)
        yield replica


def _save_model(run: Run, tmp: Path) -> None:
    """The trained model in transformers' format into `tmp` (made by the main process).

    Under --fsdp no process ever holds the whole model, at the end either: each writes its own shards
    with DCP, and the main process streams them into safetensors a group of tensors at a time, as
    `hyperclone consolidate` does. Every process must call this."""
    import shutil

    acc = run.accelerator
    model = acc.unwrap_model(run.model)
    if not run.cfg.fsdp:
        weights = acc.get_state_dict(run.model)
        if acc.is_main_process:
            model.save_pretrained(str(tmp), state_dict=weights)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from hyperclone.train.checkpoint import write_weights

    shards = run.out / ".final.dcp.tmp"
    if acc.is_main_process:
        shutil.rmtree(shards, ignore_errors=True)
    acc.wait_for_everyone()
    dcp.save({"model": get_model_state_dict(run.model)}, checkpoint_id=str(shards))
    acc.wait_for_everyone()
    if acc.is_main_process:
        # what save_pretrained writes beside the weights; FSDP2 renamed the class (FSDPLlamaForCausalLM)
        model.config.architectures = [type(model).__name__.removeprefix("FSDP")]
        model.config.save_pretrained(str(tmp))
        if model.can_generate():
            model.generation_config.save_pretrained(str(tmp))
        write_weights(shards, model.config, tmp, progress=run.cfg.progress)
        shutil.rmtree(shards)


def _stable_result(run: Run, eval_loss: float | None) -> dict:
    """What the stable model's card reports: where in the run it was taken, and its losses there."""
    state = run.state
    return {"steps": state.step, "tokens": state.tokens, "loss": run.log.last.get("loss"), "eval_loss": eval_loss}


def _stable_note(run: Run) -> None:
    """A resumed --save-stable run past its decay start without out/stable will not write it any more.

    It cannot happen by a kill: the stable model is renamed into place before a checkpoint at the decay's
    start is written, so a run resumes before that step or finds stable/ whole. It happens when the first
    run lacked --save-stable, or stable/ was removed since."""
    if run.cfg.save_stable and run.state.step >= run.feed.decay_start and not (run.out / "stable").is_dir():
        run.log.say(f"--save-stable: the run resumes at step {run.state.step}, past the decay's start at step "
                    f"{run.feed.decay_start}, and {run.out / 'stable'} does not exist: it will not be written")


def _export(run: Run, name: str, result: dict) -> None:
    """The model as it is now, in transformers' own format, into out/<name> (atomically: a hidden sibling,
    then a rename), with its card and the plots so far: `final` at the end, `stable` where the decay begins."""
    import shutil

    acc, out = run.accelerator, run.out
    tmp, target = out / f".{name}.tmp", out / name
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    _save_model(run, tmp)
    if acc.is_main_process:
        from hyperclone.arch import MOE_LAYOUTS
        from hyperclone.card import CARD, trained_card
        from hyperclone.io.output import copy_side_files
        from hyperclone.train.plots import plot_expert_load, plot_loss

        copy_side_files(Path(run.cfg.model), tmp)
        plots = [out / "loss.png"]
        plot_loss(out / "metrics.jsonl", plots[0])
        if run.balance is not None:
            plots.append(out / "expert_load.png")
            plot_expert_load(run.balance.total_counts.tolist(), run.balance.layers, plots[1])
        for plot in plots:  # beside the card that shows them, so an upload of the folder carries them
            shutil.copyfile(plot, tmp / plot.name)
        model_type = acc.unwrap_model(run.model).config.model_type
        stage = (f"the end of the stable phase (step {result['steps']} of {run.cfg.max_steps}), where the WSD decay "
                 "begins: the checkpoint to grow from" if name == "stable" else None)
        card = trained_card(run.cfg.as_dict(), result, Path(run.cfg.model), [p.name for p in plots], model_type,
                            model_type in MOE_LAYOUTS, stage)
        (tmp / CARD).write_text(str(card))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    acc.wait_for_everyone()


class _Log:
    """metrics.jsonl and a rich live progress line, on the main process only."""

    def __init__(self, out: Path, main: bool, progress: bool):
        self.out, self.main, self.progress, self.bar, self.last = out, main, progress and main, None, {}

    def say(self, text: str) -> None:
        if self.main:
            stderr.print(text, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A routine line, shown beside the progress display only: runs without one (tune's inner runs,
        benchmarks) would otherwise repeat it for every run."""
        if self.progress:
            self.say(text)

    def metrics(self, record: dict) -> None:
        if "loss" in record:
            self.last = record
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def drop_after(self, step: int) -> None:
        """On resume: forget the lines of the steps about to be redone (and a line a kill cut short)."""
        path = self.out / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", step + 1) <= step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def start(self, total: int, done: int) -> None:
        if not self.progress:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=stderr)
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, info="")

    def advance(self, record: dict) -> None:
        if self.bar is not None:
            info = (f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  "
                    f"{record['peak_memory'] / 2 ** 30:.1f} GiB")
            self.bar.update(self.task, completed=record["step"], info=info)  # DiLoCo may jump ahead or go back

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
