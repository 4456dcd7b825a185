"""PNG plots of a run: loss against tokens, how many tokens each expert received, and a learning-rate search."""
from __future__ import annotations

from pathlib import Path

from hyperclone.train.metrics import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(metrics: Path, out: Path) -> None:
    lines = read_metrics(metrics)
    train = [(m["tokens"], m["loss"]) for m in lines if "loss" in m and m["loss"] is not None]
    evals = [(m["tokens"], m["eval_loss"]) for m in lines if "eval_loss" in m]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_expert_load(counts: list[list[int]], layers: list[int], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(counts) + 1.5)))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    fig.colorbar(image, ax=ax, label="tokens routed")
    ax.set_title("expert load")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_lr_sweep(losses: dict[float, dict[int, float]], best: float, out: Path, seeds: dict[float, list[float]] | None = None,
                  others: dict[str, dict[float, float]] | None = None, chosen: str = "") -> None:
    """Final eval loss against peak learning rate, a line per budget (in tokens); with `seeds`, each
    seed's loss at the full budget as a point around its mean, so the spread a choice rests on shows;
    with `others`, the full budget's line at each searched setting not chosen, by name (`chosen` names the chosen one)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    lrs = sorted(losses)
    for tokens in sorted(losses[best]):
        if all(tokens in losses[lr] for lr in lrs):
            ax.plot(lrs, [losses[lr][tokens] for lr in lrs], "o-", label=f"{tokens:,} tokens")
        else:  # a budget only the best rate ran (tune --budgets-at best)
            ax.plot([best], [losses[best][tokens]], "s", label=f"{tokens:,} tokens, best rate only")
    if seeds:
        points = [(lr, loss) for lr in lrs for loss in seeds[lr]]
        ax.scatter(*zip(*points), marker="x", color="black", alpha=0.6, label=f"each seed, {max(losses[best]):,} tokens")
    for other, finals in sorted((others or {}).items()):
        rates = sorted(finals)
        ax.plot(rates, [finals[lr] for lr in rates], "^--", alpha=0.7, label=f"{other}, {max(losses[best]):,} tokens")
    ax.axvline(best, color="grey", linestyle=":", label=f"best {best:.3g}" + (f" at {chosen}" if others else ""))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final eval loss")
    ax.set_title("wind tunnel: WSD decay branches per learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
