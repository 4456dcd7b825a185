"""Reading a run's metrics.jsonl: the loss plot, the learning-rate search and the API's results share it."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics.jsonl file (steps, evals, expert load), in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
