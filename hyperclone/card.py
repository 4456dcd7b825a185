"""Model cards that say where a model came from, written as README.md into every grow and train output.

Rendered with huggingface_hub's ModelCard, so the Hub reads the metadata (base model, relation,
license, tags) and any upload of the directory (`hyperclone push`, `hf upload`) publishes it.
Relations: a trained model is a `finetune` of its base (continued training from its weights); a
grown-only model carries no relation, because none of the Hub's (adapter, merge, quantized,
finetune) describes "the same function in a larger architecture", and a wrong one would misfile it.
Nothing here reads or writes a token.
"""
from __future__ import annotations

import json
from pathlib import Path

CARD = "README.md"
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"


def hub_id(path: str | Path) -> str | None:
    """The Hub id of a directory in huggingface_hub's cache (.../models--org--name/snapshots/<commit>)."""
    parts = Path(path).absolute().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part[len("models--"):].replace("--", "/", 1)
    return None


def _source_card(directory: Path):
    from huggingface_hub import ModelCard

    path = directory / CARD
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path)
    except (ValueError, OSError, UnicodeDecodeError):  # a malformed card is its author's to fix, not a reason to stop
        return None


def _metadata(model_type: str, moe: bool, base: Path, relation: str | None, extra_tags: tuple[str, ...] = ()):
    from huggingface_hub import ModelCardData

    source = _source_card(base)
    data = ModelCardData(
        library_name="transformers",
        license=getattr(source.data, "license", None) if source else None,
        tags=["hyperclone", "model-growth", model_type, *(["mixture-of-experts"] if moe else []), *extra_tags],
    )
    base_id = hub_id(base)  # only a Hub id: a local base has no page to link to
    if base_id:
        data.base_model = base_id
        if relation:
            data.base_model_relation = relation
    return data


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verify_section(verified: dict | None, source: str) -> str:
    if verified and "damaged_shards" in verified:
        return "FAILED: the grown files changed after growth: " + "; ".join(verified["damaged_shards"])
    if not verified:
        return ("Not verified at grow time. `hyperclone verify " + source + " THIS_DIRECTORY` compares float32 logits "
                "with transformers' own classes (exit 0: the same function).")
    verdict = "passed" if verified["passed"] else "FAILED"
    return (f"{verdict}: max |Δlogit| {verified['max_abs_diff']:.3g} (tolerance {verified['tolerance']:g}), argmax agreement "
            f"{verified['argmax_agreement']:.4f}, {verified['tokens']} tokens compared in float32 with transformers' own "
            "classes (strict loading).")


def grown_card(growth, verified: dict | None = None):
    """The card of a grown model: where it came from, the plan, the operators and the verify figures."""
    from huggingface_hub import ModelCard


    source_dir = growth.source.directory
    name = hub_id(source_dir) or growth.source.path.name
    data = _metadata(growth.dst.family, growth.moe is not None, source_dir, None)
    summary = growth.summary()
    rows = growth.rows()
    body = "\n\n".join([
        f"# {name}, grown by hyperclone",
        f"This model was grown by hyperclone from `{name}` ({growth.src.family}). At step 0 it computes the "
        "same function as its source; it is meant for continued pretraining, which it starts where the source ended.",
        "## Growth plan\n\n" + _table(("", "source", "grown"), rows),
        "Operators:\n\n" + "\n".join(f"- {op}" for op in growth.operators()),
        f"Seed {growth.target.seed}, symmetry-breaking noise {growth.target.noise:g}, dtype {summary['dtype']}."
        + ("\n\nWarnings:\n\n" + "\n".join(f"- {w}" for w in growth.warnings) if growth.warnings else ""),
        "## Verification\n\n" + verify_section(verified, name),
        "`growth.json` beside the weights records the source files' sha256, the target, the operators and every shard's sha256.",
    ])
    return ModelCard.from_template(data, template_str=TEMPLATE, body=body)


def trained_card(settings: dict, result: dict, model_dir: Path, plots: list[str], model_type: str, moe: bool,
                 stage: str | None = None):
    """The card of a trained model: its base, the recipe, tokens seen, final losses and the plots beside it;
    `stage` says where in the run a model taken before its end was taken (the losses are then those there)."""
    from huggingface_hub import ModelCard

    data = _metadata(model_type, moe, model_dir, "finetune", ("continued-pretraining",))
    base = data.base_model or Path(str(settings.get("model", model_dir))).name
    recipe = {k: v for k, v in settings.items() if k not in ("model", "out", "force", "resume", "progress") and v not in (None, "")}
    lineage = ""
    manifest = model_dir / "growth.json"
    if manifest.is_file():
        grown = json.loads(manifest.read_text())
        lineage = ("\n\nThe base was grown by hyperclone: " + "; ".join(grown.get("operators", []))
                   + f" ({grown.get('total_params', 0):,} parameters).")
    at = "" if stage else "final "
    losses = _table(("", "value"), [("tokens seen", f"{result.get('tokens', 0):,}"), ("steps", result.get("steps")),
                                     (f"{at}train loss", _fmt(result.get("loss"))), (f"{at}eval loss", _fmt(result.get("eval_loss")))])
    body = "\n\n".join([
        f"# {base}, trained by hyperclone",
        f"Continued pretraining of `{base}` with hyperclone." + lineage + (f"\n\nThis is the model at {stage}." if stage else ""),
        "## Results\n\n" + losses,
        "\n\n".join(f"![{Path(p).stem}]({p})" for p in plots),
        "## Recipe\n\n```json\n" + json.dumps(recipe, indent=1, default=str) + "\n```",
    ])
    return ModelCard.from_template(data, template_str=TEMPLATE, body=body)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
