"""The continued-pretraining loop: Accelerate, MuonClip or AdamW, WSD, MoE balancing, exact resume.

One process or many: `accelerate launch -m hyperclone.train ...` runs the same code; the global
batch is batch_size x processes x grad_accum, and the data order depends on the seed alone.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from hyperclone.errors import UserError
from hyperclone.progress import stderr
from hyperclone.train.config import TrainConfig, make_config
from hyperclone.train.data import load_corpus, load_tokenizer, pack, train_eval_split
from hyperclone.train.optim import build_optimizer
from hyperclone.train.qkclip import QKClip
from hyperclone.train.schedule import build_scheduler

STATE_FILE = "hyperclone_state.json"  # written last: a checkpoint without it is incomplete
EXPERT_LOAD_EVERY = 10  # steps between per-expert load records in metrics.jsonl (large MoEs make them long)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).exists() and p.name[5:].isdigit()] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def _load_model(directory: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(directory)
    if not (path / "config.json").exists():
        raise UserError(f"{directory} is not a model directory (no config.json): give a grown or saved checkpoint")
    config = AutoConfig.from_pretrained(str(path))
    heads = config.architectures or []
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (heads and not any(h.endswith(("ForCausalLM", "LMHeadModel")) for h in heads)):
        kind = heads[0] if heads else config.model_type
        raise UserError(f"{directory} holds a {kind}, which is not a causal language model")
    from hyperclone.grow import load_model

    return load_model(path, dtype=torch.float32)


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
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids}


def train(config: TrainConfig | None = None, *, recipe: str | None = None, **settings) -> dict:
    """Continue pretraining `model` on `data`; returns the final figures. See TrainConfig for settings."""
    cfg = config or make_config(recipe, **settings)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    out = Path(cfg.out or f"{Path(cfg.model).name}-trained")
    existing = checkpoints(out)
    if out.exists() and any(out.iterdir()) and not cfg.resume and not cfg.force:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, --force to start over, or another -o")
    if cfg.resume and not existing:
        raise UserError(f"--resume: {out} has no complete checkpoint to continue from")

    trackers = None if cfg.trackers == "none" else cfg.trackers
    if trackers == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            trackers = None
    # cpu=True without an accelerator: then processes started by torchrun / `accelerate launch --multi_gpu`
    # form a gloo group (Accelerate picks MULTI_CPU only when told it runs on the CPU).
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              log_with=trackers, project_dir=str(out), cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    set_seed(cfg.seed)

    model = _load_model(cfg.model)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cfg.seq_len > limit:
        raise UserError(f"--seq-len {cfg.seq_len} is beyond the model's max_position_embeddings {limit}")
    log = _Log(out, main, cfg.progress)
    if main and cfg.force and out.exists() and not cfg.resume:
        for child in ("checkpoints", "final", "metrics.jsonl"):
            target = out / child
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    tokenizer = load_tokenizer(cfg.model, model.config.vocab_size)
    log.say(f"tokenizer: {tokenizer.description}")
    with accelerator.main_process_first():
        blocks = pack(load_corpus(cfg.data, cfg.text_field, cfg.streaming), tokenizer, cfg.seq_len)
        train_blocks, eval_blocks = train_eval_split(blocks, cfg.eval_fraction, cfg.seed, cfg.streaming)
    if not cfg.streaming and len(train_blocks) < cfg.batch_size * accelerator.num_processes:
        raise UserError(f"the data gives {len(train_blocks)} training blocks, fewer than one global batch: give more text")
    loader = torch.utils.data.DataLoader(train_blocks, batch_size=cfg.batch_size, shuffle=False, drop_last=True, collate_fn=_collate)
    eval_loader = torch.utils.data.DataLoader(eval_blocks, batch_size=cfg.batch_size, shuffle=False, collate_fn=_collate)

    from hyperclone.arch.moe import MOE_LAYOUTS
    from hyperclone.train.moe_balance import MoeBalance

    balance = None
    if model.config.model_type in MOE_LAYOUTS and cfg.moe_balance != "none":
        try:
            balance = MoeBalance(model, cfg.moe_balance, cfg.aux_loss_coef, cfg.z_loss_coef, cfg.bias_update_rate)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    expert_scale = 1.0
    if balance is not None and cfg.expert_lr == "hunyuan":
        expert_scale = math.sqrt(balance.spec.top_k / balance.spec.experts)
    qk = QKClip(model, cfg.qk_clip_tau) if cfg.optimizer == "muonclip" else None
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, expert_scale, qk)

    start_from = existing[-1] if cfg.resume else (Path(cfg.decay_from) if cfg.decay_from else None)
    state = {"step": 0, "tokens": 0, "batches": 0, "skipped_steps": 0, "bad_in_a_row": 0}
    if start_from is not None:
        if not (start_from / STATE_FILE).exists():
            raise UserError(f"{start_from} is not a complete hyperclone checkpoint")
        state = json.loads((start_from / STATE_FILE).read_text())
    warmup = int(cfg.warmup * cfg.max_steps) if cfg.warmup < 1 else int(cfg.warmup)
    decay_start = state["step"] if cfg.decay_from else None
    scheduler = build_scheduler(optimizer, cfg.max_steps, warmup, cfg.schedule, cfg.decay_fraction, cfg.decay_shape,
                                cfg.min_lr_ratio, decay_start)
    # The scheduler stays out of prepare(): Accelerate would step it once per process per step, and the
    # schedule is defined in optimizer steps. It is still saved and restored with the checkpoints.
    model, optimizer, loader, eval_loader = accelerator.prepare(model, optimizer, loader, eval_loader)
    accelerator.register_for_checkpointing(scheduler)
    if start_from is not None:
        accelerator.load_state(str(start_from))
        if cfg.resume and main and (out / "metrics.jsonl").exists():  # drop lines of the steps being redone
            kept = [line for line in (out / "metrics.jsonl").read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= state["step"]]
            (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
        log.say(f"{'resumed' if cfg.resume else 'decay branched'} from {start_from} at step {state['step']}")
        if cfg.decay_from and not cfg.resume:
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](state["step"])
    if trackers:
        accelerator.init_trackers("hyperclone", config={k: v for k, v in cfg.as_dict().items() if isinstance(v, (int, float, str, bool))})

    batches = _Batches(loader, accelerator)
    batches.skip(state["batches"])  # micro-batches used so far, skipped steps included
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * accelerator.num_processes
    if cfg.eval_at_start and state["step"] == 0:
        log.metrics({"step": 0, "tokens": 0, "eval_loss": _evaluate(model, eval_loader, accelerator, cfg.eval_batches)})
    log.start(cfg.max_steps, state["step"])
    last_eval = None
    while state["step"] < cfg.max_steps:
        started = time.perf_counter()
        step_lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        model.train()
        losses, finite = [], True
        for _ in range(cfg.grad_accum):
            batch = batches.next()
            state["batches"] += 1
            with accelerator.accumulate(model):
                loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
                extra = balance.take_loss() if balance else None
                total = loss + extra if extra is not None else loss
                losses.append(loss.detach())
                finite = finite and bool(torch.isfinite(accelerator.reduce(total.detach(), "sum")))
                accelerator.backward(total)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if accelerator.sync_gradients and cfg.grad_clip else None
                if accelerator.sync_gradients and finite:
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad()
        if not finite:
            state["skipped_steps"] += 1
            state["bad_in_a_row"] += 1
            if qk is not None:
                qk.reset()  # the skipped step's logits are discarded with it
            log.say(f"step {state['step'] + 1}: loss is not finite, step skipped ({state['bad_in_a_row']} in a row)")
            if state["bad_in_a_row"] >= cfg.max_bad_steps:
                raise UserError(
                    f"the loss was not finite for {cfg.max_bad_steps} steps in a row (step {state['step'] + 1}): "
                    "lower --lr, check the data, or resume from the last checkpoint"
                )
            continue
        state["bad_in_a_row"] = 0
        state["step"] += 1
        state["tokens"] += tokens_per_step
        load = balance.end_step(lambda t: accelerator.reduce(t.to(accelerator.device), "sum").cpu()) if balance else None
        mean_loss = float(accelerator.reduce(torch.stack(losses).mean(), "mean"))
        record = {
            "step": state["step"], "tokens": state["tokens"], "loss": mean_loss,
            "lr": step_lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens_per_step / (time.perf_counter() - started),
            "max_attn_logit": qk.last_max if qk is not None else None,
        }
        if load is not None and (state["step"] % EXPERT_LOAD_EVERY == 0 or state["step"] == cfg.max_steps):
            record["expert_load"] = load  # tokens per expert this step, per MoE layer
        log.metrics(record)
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state["step"])
        if cfg.eval_every and state["step"] % cfg.eval_every == 0:
            last_eval = _evaluate(model, eval_loader, accelerator, cfg.eval_batches)
            log.metrics({"step": state["step"], "tokens": state["tokens"], "eval_loss": last_eval})
            accelerator.log({"eval_loss": last_eval}, step=state["step"])
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < cfg.max_steps:
            _save_checkpoint(accelerator, out, state, cfg.keep)
        log.advance(record)
    log.stop()
    if last_eval is None or (cfg.eval_every and cfg.max_steps % cfg.eval_every):
        last_eval = _evaluate(model, eval_loader, accelerator, cfg.eval_batches)
        log.metrics({"step": state["step"], "tokens": state["tokens"], "eval_loss": last_eval})
    if cfg.save_every:
        _save_checkpoint(accelerator, out, state, cfg.keep)
    _save_final(accelerator, model, cfg, out)
    if main:
        from hyperclone.train.plots import plot_expert_load, plot_loss

        plot_loss(out / "metrics.jsonl", out / "loss.png")
        if balance is not None:
            plot_expert_load(balance.total_counts.tolist(), balance.layers, out / "expert_load.png")
    accelerator.end_training()
    final = log.last.get("loss")
    return {"out": str(out), "steps": state["step"], "tokens": state["tokens"], "loss": final, "eval_loss": last_eval,
            "skipped_steps": state["skipped_steps"]}


@torch.no_grad()
def _evaluate(model, loader, accelerator, max_batches: int) -> float | None:
    model.eval()
    losses = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        losses.append(model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.detach())
    if not losses:
        return None
    return float(accelerator.reduce(torch.stack(losses).mean(), "mean"))


def _save_checkpoint(accelerator, out: Path, state: dict, keep: int) -> None:
    """accelerate's save_state into a temporary sibling, our state file last, then a rename."""
    root = out / "checkpoints"
    final = root / f"step-{state['step']}"
    tmp = root / f".step-{state['step']}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_final(accelerator, model, cfg: TrainConfig, out: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from hyperclone.io.output import copy_side_files

        tmp, final = out / ".final.tmp", out / "final"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(str(tmp), state_dict=accelerator.get_state_dict(model))
        copy_side_files(Path(cfg.model), tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()


class _Log:
    """metrics.jsonl and a rich live progress line, on the main process only."""

    def __init__(self, out: Path, main: bool, progress: bool):
        self.out, self.main, self.progress, self.bar, self.last = out, main, progress and main, None, {}

    def say(self, text: str) -> None:
        if self.main:
            stderr.print(text, highlight=False, soft_wrap=True)

    def metrics(self, record: dict) -> None:
        if "loss" in record:
            self.last = record
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

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
            info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
            self.bar.update(self.task, advance=1, info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
