"""Training data: text files, directories, .jsonl, .parquet or a Hub dataset, tokenised and packed.

Packed blocks of `seq_len` tokens (documents joined by EOS), shuffled once with the seed, a held-out
eval split. The order is fixed by the seed alone, so a resumed run sees exactly the batches an
uninterrupted one would (the loop skips the ones already used).
"""
from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hyperclone.errors import UserError

JSON_SUFFIXES = {".jsonl", ".json"}
PARQUET_SUFFIXES = {".parquet"}
BINARY_SUFFIXES = {".pyc", ".so", ".png", ".jpg", ".gz", ".zip", ".bin", ".safetensors", ".pt", ".whl", ".o", ".a"}


def _bytes_text(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@dataclass
class Tokenizer:
    encode: Callable[[str], list[int]]
    eos: int
    description: str
    decode: Callable[[list[int]], str] = _bytes_text


def load_tokenizer(model_dir: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """The checkpoint's tokenizer, or bytes as token ids when it has none (said in `description`)."""
    directory = Path(model_dir)
    if any((directory / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the tokenizer in {directory}: {str(exc).splitlines()[0]}") from None
        eos = tok.eos_token_id if tok.eos_token_id is not None else 0
        return Tokenizer(lambda text: tok(text, add_special_tokens=False)["input_ids"], eos, f"{type(tok).__name__} from {directory}",
                         lambda ids: tok.decode(ids))
    if vocab_size >= 257:
        return Tokenizer(lambda text: list(text.encode("utf-8")), 256, "no tokenizer in the model directory: UTF-8 bytes as token ids (EOS = 256)")
    return Tokenizer(lambda text: [b % vocab_size for b in text.encode("utf-8")], 0,
                     f"no tokenizer in the model directory: UTF-8 bytes modulo the vocabulary of {vocab_size}")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                   and p.suffix not in BINARY_SUFFIXES)
    if not files:
        raise UserError(f"{path} holds no text, .jsonl or .parquet files")
    return files


def load_corpus(source: str, text_field: str = "text", streaming: bool = False):
    """A `datasets` dataset with a text column, from a path or a Hub dataset name."""
    from datasets import load_dataset
    from datasets.utils import logging as datasets_logging

    path = Path(source).expanduser()
    kinds: set[str] = set()
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its own multi-line reports; we say one line
    try:
        if path.exists():
            files = _files(path)
            if all(f.stat().st_size == 0 for f in files):
                raise UserError(f"data {source} is empty: give text to train on")
            kinds = {"json" if f.suffix in JSON_SUFFIXES else "parquet" if f.suffix in PARQUET_SUFFIXES else "text" for f in files}
            if len(kinds) > 1:
                raise UserError(f"{path} mixes {', '.join(sorted(kinds))} files: give one kind of data")
            kind = next(iter(kinds))
            options = {"sample_by": "document"} if kind == "text" and len(files) > 1 else {"sample_by": "paragraph"} if kind == "text" else {}
            data = load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=streaming, **options)
        else:
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
                raise UserError(f"{source} is not a file or directory, and the Hub is offline: give a local path")
            data = load_dataset(source, split="train", streaming=streaming)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable data, most of them saying little
        found = _diagnose(_files(path), kinds.pop() if kinds else "") if path.exists() else None
        raise UserError(found or f"cannot read data {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        datasets_logging.set_verbosity(verbosity)
    columns = data.column_names or []
    if text_field not in columns:
        raise UserError(f"data {source} has no {text_field!r} field (fields: {', '.join(columns) or 'none'}): pass --text-field")
    return data.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text" else data.select_columns(["text"])


def _diagnose(files: list[Path], kind: str) -> str | None:
    """What makes a data file unreadable, precisely: the byte that is not UTF-8, the line that is not JSON."""
    for file in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(file, "rb") as fh:
            while block := fh.read(1 << 20):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:
                    return f"data file {file} is not UTF-8 text (byte {offset + exc.start}): give text files, or convert it to UTF-8"
                offset += len(block)
        if kind != "json":
            continue
        text = file.read_text("utf-8")
        try:
            json.loads(text)
            continue  # one JSON document, not JSON lines
        except ValueError:
            pass
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                return f"data file {file} line {number} is not JSON ({exc.msg}): fix that line"
            if not isinstance(record, dict):
                return f"data file {file} line {number} is a JSON {type(record).__name__}, not an object with a text field"
    return None


def pack(data, tokenizer: Tokenizer, seq_len: int):
    """Token blocks of exactly `seq_len`, documents separated by EOS (a block may span documents)."""

    def group(batch):
        ids: list[int] = []
        for text in batch["text"]:
            if text:
                ids.extend(tokenizer.encode(text))
                ids.append(tokenizer.eos)
        blocks = len(ids) // seq_len
        return {"input_ids": [ids[i * seq_len : (i + 1) * seq_len] for i in range(blocks)]}

    return data.map(group, batched=True, batch_size=256, remove_columns=["text"])


@dataclass(frozen=True)
class Source:
    """One corpus of a data mixture and its share of the blocks drawn."""

    path: str
    weight: float = 1.0


def mixture(value, setting: str = "--data") -> list[Source]:
    """A data setting as sources: a path, `PATH=WEIGHT` strings (repeatable flags), or a recipe's list of
    `{path, weight}` mappings. Weights are relative; a single source needs none."""
    items = value if isinstance(value, (list, tuple)) else [value]
    sources = []
    for item in items:
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"path", "weight"})
            if unknown or "path" not in item:
                raise UserError(f"{setting}: each source is {{path, weight}}, got {item!r}")
            path, weight = str(item["path"]), item.get("weight", 1.0)
        elif isinstance(item, str):
            path, sep, text = item.rpartition("=")
            if not sep:
                path, text = item, "1"
            try:
                weight = float(text)
            except ValueError:
                path, weight = item, 1.0  # an '=' that is part of the path
        else:
            raise UserError(f"{setting}: a source is a path or {{path, weight}}, got {item!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise UserError(f"{setting}: the weight of {path} must be a positive number, got {weight!r}")
        sources.append(Source(path, float(weight)))
    if not sources or not all(s.path for s in sources):
        raise UserError(f"{setting}: give at least one data path")
    return sources


def mixed_blocks(sources: list[Source], tokenizer: Tokenizer, seq_len: int, text_field: str, streaming: bool, seed: int,
                 eval_fraction: float, split_seed: int | None = None):
    """Train and eval blocks of a mixture: each source packed and split on its own (so each holds out its
    own eval share), then interleaved by weight with the seed — the same order on every run and process.
    The held-out blocks are drawn with `split_seed` (default: the seed), so runs at several seeds can be
    judged on one eval set. Each block carries its `source` index, so the loop can log what it trained on."""
    parts = []
    for index, source in enumerate(sources):
        blocks = pack(load_corpus(source.path, text_field, streaming), tokenizer, seq_len)
        split = train_eval_split(blocks, eval_fraction, (seed if split_seed is None else split_seed) + index, streaming,
                                 order_seed=seed + index)
        parts.append([d.map(lambda _, i=index: {"source": i}) for d in split])
    if len(parts) == 1:
        return tuple(parts[0])
    from datasets import interleave_datasets

    total = sum(s.weight for s in sources)
    shares = [s.weight / total for s in sources]
    # all_exhausted: every block of every source is seen each epoch, the small sources repeated to keep the shares
    return tuple(interleave_datasets([p[k] for p in parts], probabilities=shares, seed=seed, stopping_strategy="all_exhausted")
                 for k in (0, 1))


def train_eval_split(blocks, eval_fraction: float, seed: int, streaming: bool, eval_blocks: int = 0,
                     order_seed: int | None = None):
    """Shuffle once with the seed; hold out a fraction (or a count, when streaming) for evaluation. With an
    `order_seed` other than the seed, the training blocks are shuffled again with it: another data order,
    the same held-out blocks (one seed, as before, needs one shuffle, so its runs are unchanged)."""
    again = order_seed is not None and order_seed != seed
    if streaming:
        shuffled = blocks.shuffle(seed=seed, buffer_size=10_000)
        held = eval_blocks or 16
        train = shuffled.skip(held)
        return (train.shuffle(seed=order_seed, buffer_size=10_000) if again else train), shuffled.take(held)
    count = len(blocks)
    if count < 2:
        raise UserError(f"the data gives {count} block(s) of this --seq-len: give more text or a shorter --seq-len")
    held = max(1, int(round(count * eval_fraction))) if eval_fraction > 0 else 0
    shuffled = blocks.shuffle(seed=seed)
    train = shuffled.select(range(held, count))
    return (train.shuffle(seed=order_seed) if again else train), shuffled.select(range(held))
