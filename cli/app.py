"""`hyperclone` commands. Each one parses flags, calls the Python API and renders the result."""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from hyperclone.arch import DENSE_FAMILIES

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Grow small language models into larger ones that compute the same function.")
out = Console()
err = Console(stderr=True)


DEBUG_VARIABLE = "HYPERCLONE_DEBUG"  # set to 1 (or pass --debug) for the traceback of an unexpected error


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def command(interrupted: str = "interrupted"):
    """Wrap a command: bad input is one line and exit 2; an unexpected error is one line asking for a
    report and exit 1 (the traceback only with --debug); Ctrl-C says what it left behind."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            import warnings

            import click

            from hyperclone.errors import UserError

            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err.print(f"[bold red]interrupted[/]: {interrupted}", highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise  # the command's own exit code, or click's usage errors
            except Exception as exc:
                if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
                    raise
                text = " ".join(str(exc).split())[:300]
                err.print(f"[bold red]error:[/] internal error ({type(exc).__name__}: {text}); this is a bug in hyperclone, "
                          f"please report it with the command you ran (rerun with --debug or {DEBUG_VARIABLE}=1 for the traceback)",
                          highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        return wrapper

    return decorate


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error.")) -> None:
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


def _overrides(pairs: list[str] | None) -> dict | None:
    from hyperclone.errors import UserError

    if not pairs:
        return None
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r}: write KEY=VALUE, e.g. --set num_attention_heads=8")
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


SetOpt = typer.Option(None, "--set", help="Config field for a source without config.json, KEY=VALUE (repeatable).")
ConfigOpt = typer.Option(None, "--config", help="config.json to use for the source.")
PickleOpt = typer.Option(False, "--allow-pickle", help="Read pickled .bin/.pt weights (with weights_only=True).")


def _plan_options(width, ffn, layers, noise, seed, dtype, config, set_, allow_pickle) -> dict:
    layer_value: int | str | None = layers
    if layers is not None and layers.isdigit():
        layer_value = int(layers)
    return dict(width=width, ffn=ffn, layers=layer_value, noise=noise, seed=seed, dtype=dtype,
                config=config, overrides=_overrides(set_), allow_pickle=allow_pickle)


@app.command()
@command("the output was not written; continue an interrupted grow with the same command and --resume")
def grow(
    src: str = typer.Argument(..., help="A .safetensors file, a model directory or hf://org/name[@rev]."),
    to: str = typer.Option(..., "--to", help="Preset name (see `hyperclone presets`) or a target YAML file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output directory (default: <source>-<target>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write nothing."),
    width: Optional[int] = typer.Option(None, help="Override the target's width multiplier."),
    ffn: Optional[int] = typer.Option(None, help="Override the target's FFN multiplier."),
    layers: Optional[str] = typer.Option(None, help="Override the target's layer count (N or Nx)."),
    noise: Optional[float] = typer.Option(None, help="Symmetry-breaking noise: std relative to each row's RMS, capped at 1.5|w|/n per weight (default 1.5, at the cap almost everywhere); 0 gives exact copies."),
    seed: Optional[int] = typer.Option(None, help="Seed of the symmetry-breaking noise."),
    dtype: Optional[str] = typer.Option(None, help="Output dtype: float32, bfloat16 or float16 (default: the source's)."),
    shard_size: str = typer.Option("5GB", "--shard-size", help="Largest shard, e.g. 5GB or 500MB."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Shards written in parallel (threads; default: the CPU cores)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted grow into the same -o, keeping its verified shards."),
    check: bool = typer.Option(False, "--verify", help="Verify the output against SRC and put the figures in its model card."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Hub repo org/name: verify, then push the output there."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    allow_pickle: bool = PickleOpt,
) -> None:
    """Grow SRC into a larger model that computes the same function."""
    import hyperclone

    options = _plan_options(width, ffn, layers, noise, seed, dtype, config, set_, allow_pickle)
    if push_to_hub:
        from hyperclone.hub import check_repo_id

        check_repo_id(push_to_hub)
    if output is not None and not dry_run:
        from hyperclone.grow import check_output_early

        check_output_early(src, output, force)
    growth = hyperclone.plan(src, to, **options)
    summary = growth.summary()
    for warning in growth.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if output is None:
        output = Path(f"{Path(src.rstrip('/')).stem}-{growth.target.name}")
    from hyperclone.grow import default_workers

    workers = workers if workers is not None else default_workers()
    if dry_run:
        from hyperclone.grow import output_figures
        from hyperclone.throughput import estimate

        _print_plan(growth, output_figures(growth, shard_size))
        rate = estimate(growth, output, workers)
        out.print(f"  ETA {_duration(rate['eta_seconds'])} with {workers} worker{'s' if workers > 1 else ''} "
                  f"(measured here: {rate['produce_bytes_per_s'] / 1e6:.0f} MB/s per worker, disk {rate['disk_bytes_per_s'] / 1e6:.0f} MB/s)",
                  highlight=False, soft_wrap=True)
        return
    from hyperclone.grow import write_plan

    path = write_plan(growth, output, force=force, shard_size=shard_size, progress=True, workers=workers, resume=resume)
    err.print(f"[green]grown[/] {summary['total_params']:,} parameters → {path}")
    if check or push_to_hub:
        from hyperclone.grow import verify_into_card

        result = verify_into_card(growth, src, path, options)
        err.print(f"[green]verified[/] max |Δlogit| {result['max_abs_diff']:.3g}, argmax agreement {result['argmax_agreement']:.4f}")
    if push_to_hub:
        _report_push(hyperclone.push(path, push_to_hub, private=private))


@app.command()
@command()
def plan(
    src: str = typer.Argument(..., help="A .safetensors file, a model directory or hf://org/name[@rev]."),
    to: str = typer.Option(..., "--to", help="Preset name or target YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    shard_size: str = typer.Option("5GB", "--shard-size", help="Largest shard, for the shard count."),
    width: Optional[int] = typer.Option(None),
    ffn: Optional[int] = typer.Option(None),
    layers: Optional[str] = typer.Option(None),
    noise: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    dtype: Optional[str] = typer.Option(None),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    allow_pickle: bool = PickleOpt,
) -> None:
    """Show what growing SRC to a target produces, reading headers only."""
    import hyperclone

    from hyperclone.grow import output_figures

    growth = hyperclone.plan(src, to, **_plan_options(width, ffn, layers, noise, seed, dtype, config, set_, allow_pickle))
    summary, figures = growth.summary(), output_figures(growth, shard_size)
    if as_json:
        sys.stdout.write(json.dumps({**summary, **figures}) + "\n")
        return
    for warning in growth.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    _print_plan(growth, figures)


def _print_plan(growth, figures: dict) -> None:
    """The plan's own before/after table (what a notebook shows), its operators, shards and goal."""
    from hyperclone.io.writer import format_size

    out.print(growth)
    for op in growth.operators():
        out.print(f"  • {op}", highlight=False, soft_wrap=True)
    out.print(f"  {figures['shards']} shard{'s' if figures['shards'] > 1 else ''}, needs {format_size(figures['free_bytes_needed'])} free",
              highlight=False)
    goal = growth.goal
    if goal:
        g = goal["goal"]
        active = f", active {goal['active_error']:+.1%} of {g['active_params']:,}" if g["active_params"] else ""
        out.print(f"  goal: total {goal['total_error']:+.1%} of {g['total_params']:,}{active}", highlight=False, soft_wrap=True)
        out.print(f"  chosen: {goal['chosen']}", highlight=False, soft_wrap=True)
        if goal["rejected"]:
            out.print(f"  rejected: {goal['rejected']}", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
@command()
def verify(
    src: str = typer.Argument(..., help="The source checkpoint."),
    grown: str = typer.Argument(..., help="The grown checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    seq_len: int = typer.Option(32, "--seq-len", help="Tokens per sequence."),
    batch: int = typer.Option(2, "--batch", help="Sequences."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random tokens."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest allowed |logit difference|."),
    stream: Optional[bool] = typer.Option(None, "--stream/--no-stream",
                                          help="One decoder layer in memory at a time (default: above 1 GB of float32 weights)."),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums",
                                   help="Check GROWN's shards against the sha256 in its growth.json first."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    allow_pickle: bool = PickleOpt,
) -> None:
    """Check with transformers' own classes that GROWN computes what SRC computes (exit 0 yes, 1 no)."""
    import hyperclone

    result = hyperclone.verify(src, grown, batch=batch, seq_len=seq_len, seed=seed, tolerance=tolerance,
                               config=config, overrides=_overrides(set_), allow_pickle=allow_pickle, stream=stream,
                               checksums=checksums, progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        _print_verdict(result)
    raise typer.Exit(0 if result["passed"] else 1)


def _print_verdict(result: dict) -> None:
    verdict = "[green]PASS[/]" if result["passed"] else "[red]FAIL[/]"
    if result.get("damaged_shards"):
        out.print(f"{verdict} the grown files changed after growth: {'; '.join(result['damaged_shards'])}", highlight=False, soft_wrap=True)
        return
    out.print(
        f"{verdict} max |Δlogit| {result['max_abs_diff']:.3e} (tolerance {result['tolerance']:g}), "
        f"argmax agreement {result['argmax_agreement']:.2%} on {result['tokens']} tokens; "
        f"embeddings of all {result['embedding_rows']:,} token ids within {result['embedding_max_abs_diff']:.3e}; "
        f"parameters {result['source_params']:,} → {result['grown_params']:,}"
        + (f"; {result['shards_checked']} shard checksum{'s' if result['shards_checked'] > 1 else ''} match" if result["shards_checked"] else ""),
        soft_wrap=True,
    )
    if result.get("streamed"):
        worst = max(result["residual_max_abs_diff"], default=0.0)
        out.print(f"  layer-streamed: residual streams agree to {worst:.3e} after every source layer"
                  + (f"; experts loaded as picked in layers {result['picked_expert_layers']}" if result["picked_expert_layers"] else ""),
                  highlight=False, soft_wrap=True)


@app.command()
@command()
def inspect(
    ckpt: str = typer.Argument(..., help="A .safetensors file, a model directory or hf://org/name[@rev]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    allow_pickle: bool = PickleOpt,
) -> None:
    """Family, layers, widths, parameter count, dtype and size on disk."""
    import hyperclone

    info = hyperclone.inspect(ckpt, config_path=config, overrides=_overrides(set_), allow_pickle=allow_pickle)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    table = Table(title=info["path"], show_header=False)
    for key, value in info.items():
        if key != "path":
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    out.print(table)


def _report_push(result: dict, dry_run: bool = False) -> None:
    for name, size in result["files"]:
        out.print(f"  {size:>14,}  {name}", highlight=False)
    total = sum(size for _, size in result["files"])
    err.print(f"{'would send' if dry_run else 'pushed'} {len(result['files'])} files, {total:,} bytes from {result['folder']} "
              f"to {result['repo']}" + (f": {result['url']}" if result["url"] else ""), highlight=False, soft_wrap=True)


@app.command()
@command()
def push(
    directory: Path = typer.Argument(..., help="A grown model directory, a run's final/ or the run directory."),
    repo: str = typer.Option(..., "--repo", help="Hub model id org/name (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (created if missing)."),
    message: Optional[str] = typer.Option(None, "--message", help="Commit message."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and print the model card; contact nothing."),
) -> None:
    """Publish a grown or trained model to the Hugging Face Hub, with its model card."""
    import hyperclone

    result = hyperclone.push(directory, repo, private=private, revision=revision, message=message, dry_run=dry_run)
    if dry_run:
        out.print(result["card"] or "(no README.md: the repo gets no model card)", markup=False, highlight=False)
    _report_push(result, dry_run)


@app.command()
@command("nothing was written: the output appears only when complete")
def consolidate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written with --checkpoint-format dcp (run/checkpoints/step-N)."),
    output: Path = typer.Option(..., "-o", "--output", help="New model directory (safetensors, config, tokenizer)."),
    shard_size: str = typer.Option("5GB", "--shard-size", help="Largest shard, e.g. 5GB or 500MB."),
) -> None:
    """Gather a sharded torch.distributed.checkpoint checkpoint into one model directory transformers loads."""
    import hyperclone

    path = hyperclone.consolidate(checkpoint, output, shard_size=shard_size)
    err.print(f"[green]consolidated[/] {checkpoint} → {path}", soft_wrap=True)


@app.command()
@command()
def presets() -> None:
    """List the growth presets, families and Accelerate launch configs shipped with hyperclone."""
    import hyperclone

    table = Table(title="presets (use with --to NAME)")
    table.add_column("name")
    table.add_column("settings")
    table.add_column("description")
    for name, data in hyperclone.presets().items():
        settings = ", ".join(f"{k}={v}" for k, v in data.items() if k != "description")
        table.add_row(name, settings, data.get("description", ""))
    out.print(table)
    table = Table(title="families (transformers model_type of the source)")
    table.add_column("family")
    table.add_column("kind")
    table.add_column("growth")
    table.add_column("Liger on GPU")
    for row in hyperclone.families():
        table.add_row(row["family"], row["kind"], row["moves"], "yes" if row["liger"] else "")
    out.print(table)
    table = Table(title="launch configs (accelerate launch --config_file PATH -m hyperclone.train ...)")
    table.add_column("name")
    table.add_column("path")
    for name, path in hyperclone.launch_configs().items():
        table.add_row(name, path)
    out.print(table)


@app.command()
@command()
def demo(
    family: str = typer.Option(DENSE_FAMILIES[0], help="Family of the tiny example model (any of `hyperclone presets`' families)."),
    to: str = typer.Option("2x", "--to", help="Preset or target YAML."),
    workdir: Optional[Path] = typer.Option(None, help="Keep the example models here (default: a temporary directory)."),
) -> None:
    """Make a tiny model, grow it and verify it: the whole job on a built-in example."""
    import hyperclone
    from hyperclone.testing import save_tiny_model

    with tempfile.TemporaryDirectory(prefix="hyperclone-demo-") as tmp:
        base = workdir or Path(tmp)
        source = save_tiny_model(family, base / f"tiny-{family}")
        err.print(f"made a tiny {family} model in {source}")
        grown = hyperclone.grow(source, to, base / f"tiny-{family}-{to}", force=True)
        result = hyperclone.verify(source, grown)
        _print_verdict(result)
    raise typer.Exit(0 if result["passed"] else 1)


@app.command()
@command("training stopped; continue from its last checkpoint with the same command and --resume "
         "(checkpoints are written every --save-every steps)")
def train(
    model: str = typer.Option(..., "--model", help="A grown (or any saved) transformers checkpoint directory."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Text file, directory, .jsonl, .parquet, or a Hub dataset name; "
                                            "repeat as PATH=WEIGHT for a mixture."),
    decay_data: Optional[list[str]] = typer.Option(None, "--decay-data", help="Data (or PATH=WEIGHT mixture) that takes over "
                                                   "when the WSD decay starts."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run directory (default: <model>-trained)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Training recipe: a name in recipes/ or a YAML file."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per process per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="muonclip | muon | adamw"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="wsd | cosine | constant"),
    decay_shape: Optional[str] = typer.Option(None, "--decay-shape", help="linear | cosine | 1-sqrt | exp"),
    decay_fraction: Optional[float] = typer.Option(None, "--decay-fraction"),
    decay_from: Optional[str] = typer.Option(None, "--decay-from", help="Branch a decay run from this stable-phase checkpoint."),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Fraction of steps (< 1) or a step count."),
    save_every: Optional[int] = typer.Option(None, "--save-every"),
    save_stable: Optional[bool] = typer.Option(None, "--save-stable", help="WSD: also write the model where the decay "
                                               "begins to <run>/stable, the checkpoint to grow from."),
    keep: Optional[int] = typer.Option(None, "--keep"),
    checkpoint_format: Optional[str] = typer.Option(None, "--checkpoint-format", help="accelerate (default) | dcp: "
                                                    "torch.distributed.checkpoint shards, resumable on any number of processes."),
    async_checkpoint: Optional[bool] = typer.Option(None, "--async-checkpoint", help="With dcp: write checkpoints in the "
                                                    "background while training goes on."),
    fsdp: Optional[bool] = typer.Option(None, "--fsdp", help="Shard the model over the processes of `accelerate launch` "
                                        "(FSDP2): each loads only its part of the weights."),
    activation_checkpointing: Optional[bool] = typer.Option(None, "--activation-checkpointing", help="Keep only each decoder "
                                                            "layer's input and recompute the rest in backward: less memory, ~1/3 more compute."),
    compile: Optional[bool] = typer.Option(None, "--compile", help="torch.compile each decoder layer: faster steps on a GPU "
                                           "after a one-time compile (a C++ compiler on a CPU)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every"),
    moe_balance: Optional[str] = typer.Option(None, "--moe-balance", help="auto | aux | aux_free | none"),
    text_field: Optional[str] = typer.Option(None, "--text-field"),
    streaming: Optional[bool] = typer.Option(None, "--streaming/--no-streaming"),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from the latest checkpoint in the run directory."),
    force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a run."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the held-out split (default: --seed), "
                                             "to train at other seeds on one eval set."),
    trackers: Optional[str] = typer.Option(None, "--trackers", help="tensorboard (default) | none | another Accelerate tracker."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Hub repo org/name: push the final model there, with its card."),
    private: Optional[bool] = typer.Option(None, "--private", help="With --push-to-hub: create the repo private."),
    diloco: Optional[bool] = typer.Option(None, "--diloco", help="DiLoCo across replica groups (torchft): this process is one group."),
    sync_every: Optional[int] = typer.Option(None, "--sync-every", help="DiLoCo: inner steps between outer syncs (default 100)."),
    outer_lr: Optional[float] = typer.Option(None, "--outer-lr", help="DiLoCo: outer Nesterov SGD learning rate (default 0.7)."),
    outer_momentum: Optional[float] = typer.Option(None, "--outer-momentum", help="DiLoCo: outer momentum (default 0.9)."),
    lighthouse: Optional[str] = typer.Option(None, "--lighthouse", help="DiLoCo: the torchft lighthouse, HOST:PORT."),
    replica_id: Optional[str] = typer.Option(None, "--replica-id", help="DiLoCo: this group's name (default group-<index>)."),
    replica_index: Optional[int] = typer.Option(None, "--replica-index", help="DiLoCo: this group's data shard, 0..replicas-1."),
    replicas: Optional[int] = typer.Option(None, "--replicas", help="DiLoCo: how many shards the training data is cut into."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="DiLoCo: groups a sync waits for (default 1)."),
    hostname: Optional[str] = typer.Option(None, "--hostname", help="DiLoCo: the name other groups reach this machine by."),
    diloco_timeout: Optional[float] = typer.Option(None, "--diloco-timeout", help="DiLoCo: seconds a quorum or all-reduce "
                                                   "may take before a group is given up on (default 60)."),
) -> None:
    """Continue pretraining a (grown) model: Accelerate, MuonClip, Warmup-Stable-Decay, exact resume."""
    import hyperclone

    settings = {k: v for k, v in locals().items() if k not in ("recipe", "output", "hyperclone")}
    for key in ("data", "decay_data"):  # one value is a path, several a mixture
        settings[key] = settings[key][0] if settings[key] and len(settings[key]) == 1 else settings[key] or None
    settings["out"] = str(output) if output else None
    settings["resume"] = resume or None
    settings["force"] = force or None
    result = hyperclone.train(recipe=recipe, **settings)
    import torch.distributed as dist

    launched = dist.is_available() and dist.is_initialized()
    if launched:  # under a launcher: the group torn down here, not at interpreter exit
        dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":  # under a launcher, the first process speaks for all
        err.print(f"[green]trained[/] {result['steps']} steps, {result['tokens']:,} tokens: loss {_figure(result['loss'])}, "
                  f"eval loss {_figure(result['eval_loss'])} → {result['out']}/final"
                  + (f" (stable phase: {result['stable']})" if result.get("stable") else ""), soft_wrap=True)
    if launched or diloco:
        _exit_past_teardown()


def _figure(value) -> str:
    """A loss for the summary line; None (no step ran in this call: a finished run resumed, or no eval) is '-'."""
    return "-" if value is None else f"{value:.4f}"


def _exit_past_teardown() -> None:
    """End a process that trained in process groups once everything is written, skipping the interpreter's
    teardown. There, torch 2.13's gloo groups sometimes abort a finished process ('terminate called without
    an active exception', SIGABRT: 1 in 6 repeats of the test of two DiLoCo groups of two), which a launcher
    reports as a failed run; destroying the groups first does not prevent it. Nothing is left to do at that
    point: the run's files are closed, checkpoints waited for, and the streams are flushed here."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
@command("tuning stopped; the finished learning rates are in the output's runs/ folder")
def tune(
    model: str = typer.Option(..., "--model", help="A grown (or any saved) transformers checkpoint directory."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Training data, as for `train` (repeat PATH=WEIGHT for a mixture)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Results folder (default: <model>-tune)."),
    lrs: Optional[str] = typer.Option(None, "--lrs", help="Peak learning rates, comma-separated (default: the recipe's x 1/4 .. 4)."),
    budget_tokens: Optional[int] = typer.Option(None, "--budget-tokens", help="Tokens of the longest run (default: the recipe's steps)."),
    budgets_at: str = typer.Option("every", "--budgets-at", help="every: each learning rate runs every budget (the best rate per "
                                   "budget); best: the smaller budgets at the best rate only (its loss against tokens, for less)."),
    extend: int = typer.Option(2, "--extend", help="Learning rates to add past the grid's edge while the best sits on it."),
    seeds: int = typer.Option(1, "--seeds", help="Runs per learning rate, at training seeds --seed onwards (one held-out split, "
                              "--split-seed's); each rate is judged by their mean (one run can be a lucky draw where the loss is "
                              "bumpy in the rate)."),
    weight_decays: Optional[str] = typer.Option(None, "--weight-decays", help="Weight decays, comma-separated: the whole learning-"
                                                "rate search at each, the best pair kept (default: the recipe's decay alone)."),
    decay_fractions: Optional[str] = typer.Option(None, "--decay-fractions", help="WSD decay fractions, comma-separated: the whole "
                                                  "search at each (and each weight decay), the best kept (default: the recipe's alone)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Training recipe the search starts from."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="muonclip | muon | adamw"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Fraction of the budget (< 1) or a step count."),
    decay_fraction: Optional[float] = typer.Option(None, "--decay-fraction"),
    eval_batches: Optional[int] = typer.Option(None, "--eval-batches"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the held-out split (default: --seed)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier search in the output folder."),
) -> None:
    """Pick the peak learning rate with MiniCPM's wind tunnel: a stable run per learning rate, WSD decay
    branches from it; writes the best as a training recipe, with a plot of final loss against learning rate."""
    import hyperclone

    grid, decays = _numbers(lrs, "--lrs"), _numbers(weight_decays, "--weight-decays")
    fractions = _numbers(decay_fractions, "--decay-fractions")
    mix = data[0] if data and len(data) == 1 else data or None
    given = dict(optimizer=optimizer, seq_len=seq_len, batch_size=batch_size, warmup=warmup, decay_fraction=decay_fraction,
                 eval_batches=eval_batches, seed=seed, split_seed=split_seed)
    result = hyperclone.tune(model, mix, output, lrs=grid, budget_tokens=budget_tokens, budgets_at=budgets_at, extend=extend, seeds=seeds,
                             weight_decays=decays, decay_fractions=fractions, recipe=recipe, force=force, trackers="none",
                             **{k: v for k, v in given.items() if v is not None})
    chosen = ", ".join(f"{name.replace('_', ' ')} {result[name]:g}" for name in result.get("searched", ()))
    titles = ([f"final eval loss, mean ± half the range of {seeds} seeds"] if seeds > 1 else []) + ([f"at {chosen}"] if chosen else [])
    table = Table("peak lr", *(f"{t:,} tokens" for t in result["budgets_tokens"]), title=", ".join(titles) or None)
    for lr, by in result["eval_loss"].items():
        spread = result["eval_loss_by_seed"][lr]
        table.add_row(("* " if float(lr) == result["best_lr"] else "") + lr,
                      *(f"{by[t]:.4f}" + (f" ± {(max(spread[t]) - min(spread[t])) / 2:.4f}" if seeds > 1 else "") if t in by else "–"
                        for t in map(str, result["budgets_tokens"])))
    best_by = result["best_lr_by_budget"]
    table.add_row("best lr", *(f"{best_by[t]:.3g}" if t in best_by else "–" for t in map(str, result["budgets_tokens"])))
    out.print(table)
    if chosen:  # each searched combination's own search: its best rate and that rate's loss
        names = result["searched"]
        by_setting = Table(*(name.replace("_", " ") for name in names), "best lr", f"final eval loss, {result['budget_tokens']:,} tokens")
        for found in result["settings"].values():
            cells = [f"{found[name]:g}" for name in names]
            if all(found[name] == result[name] for name in names):
                cells[0] = "* " + cells[0]
            loss = found["eval_loss"][f"{found['best_lr']:.6g}"]
            by_setting.add_row(*cells, f"{found['best_lr']:.3g}", f"{loss:.4f}")
        out.print(by_setting)
    if len(set(result["best_lr_by_budget"].values())) > 1:
        err.print(f"the best learning rate moves with the budget: the recipe holds for {result['budget_tokens']:,} tokens; "
                  "tune again with --budget-tokens for a different one", soft_wrap=True)
    err.print(f"[green]best learning rate[/] {result['best_lr']:.3g}"
              + (f" at {chosen}" if chosen else "")
              + f" (eval loss {result['best_eval_loss']:.4f}) → "
              f"recipe {result['recipe']}, plot {result['plot']}", soft_wrap=True)


def _numbers(text: str | None, option: str) -> list[float] | None:
    """A comma-separated list of numbers, or None when the option was not given."""
    from hyperclone.errors import UserError

    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, got {text!r}") from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
