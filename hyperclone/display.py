"""What the API returns, shown the way people look at it: an HTML table in Jupyter, a rich table in
a terminal, a plain dict (or object) everywhere else, so scripts and `--json` see no difference."""
from __future__ import annotations

import html
from pathlib import Path


class Table:
    """Mixin: `_table()` gives (title, header, rows); Jupyter calls `_repr_html_`, rich calls `__rich__`."""

    def _table(self) -> tuple[str, tuple[str, ...], list[tuple]]:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        title, header, rows = self._table()
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><caption>{html.escape(title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __rich__(self):
        from rich.table import Table as RichTable

        title, header, rows = self._table()
        table = RichTable(title=title)
        for h in header:
            table.add_column(str(h))
        for row in rows:
            table.add_row(*(str(c) for c in row))
        return table


def shape_rows(source: dict, grown: dict, source_params: tuple[int, int], grown_params: tuple[int, int]) -> list[tuple]:
    """Before/after rows of a growth: the shapes, then total and active parameters."""
    rows = [(label, source[key], grown[key]) for label, key in (
        ("hidden size", "hidden"), ("attention heads", "heads"), ("key/value heads", "kv_heads"), ("head dim", "head_dim"),
        ("FFN inner size", "intermediate"), ("layers", "layers"), ("vocabulary", "vocab"), ("tied embeddings", "tied"))]
    rows.append(("parameters (total)", f"{source_params[0]:,}", f"{grown_params[0]:,}"))
    rows.append(("parameters (active per token)", f"{source_params[1]:,}", f"{grown_params[1]:,}"))
    return rows


class VerifyResult(dict, Table):
    """verify's figures (a dict, as before), shown as a table; `.plot()` draws the per-token differences."""

    def _table(self):
        if "damaged_shards" in self:
            return "verify: the grown files changed after growth", ("", "value"), [("verdict", "FAIL"), *(
                ("damaged", shard) for shard in self["damaged_shards"])]
        rows = [("verdict", "PASS" if self["passed"] else "FAIL"),
                ("max |Δlogit|", f"{self['max_abs_diff']:.3e} (tolerance {self['tolerance']:g})"),
                ("mean |Δlogit|", f"{self['mean_abs_diff']:.3e}"), ("argmax agreement", f"{self['argmax_agreement']:.4f}"),
                ("tokens compared", self["tokens"]), ("embedding rows checked", self.get("embedding_rows")),
                ("parameters", f"{self.get('source_params', 0):,} → {self.get('grown_params', 0):,}")]
        return "verify: float32 logits, transformers' own classes", ("", "value"), rows

    def plot(self, path: str | Path | None = None):
        """A histogram of each token's largest |Δlogit| (log scale), against the tolerance; saved to `path` if given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        if "per_token_max_abs_diff" not in self:
            raise ValueError("no logits were compared (the grown files failed their checksums): nothing to plot")
        values = np.maximum(np.asarray(self["per_token_max_abs_diff"], dtype=float), 1e-12)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.logspace(np.log10(values.min()), np.log10(max(values.max(), self["tolerance"])) + 0.1, 30)
        ax.hist(values, bins=bins)
        ax.set_xscale("log")
        ax.axvline(self["tolerance"], color="red", linestyle="--", label=f"tolerance {self['tolerance']:g}")
        ax.set_xlabel("largest |Δlogit| of a token (float32)")
        ax.set_ylabel("tokens")
        ax.set_title(f"{'PASS' if self['passed'] else 'FAIL'}: {self['tokens']} tokens, argmax agreement {self['argmax_agreement']:.4f}")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig


class Inspection(dict, Table):
    """inspect's figures (a dict, as before), shown as a table."""

    def _table(self):
        rows = [(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in self.items()]
        return f"{self.get('family')}: {self.get('path')}", ("", "value"), rows


class TrainResult(dict):
    """train's result (a dict, as before); `.metrics` is every line of metrics.jsonl, `.to_pandas()` a DataFrame."""

    @property
    def metrics(self) -> list[dict]:
        from hyperclone.train.metrics import read_metrics

        return read_metrics(Path(self["out"]) / "metrics.jsonl")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.metrics)


class Comparison(dict, Table):
    """Greedy continuations of one prompt by the source and the grown model, side by side."""

    def _table(self):
        rows = [("source", self["source_text"]), ("grown", self["grown_text"])]
        verdict = "identical" if self["identical"] else "different"
        return f"{self['max_new_tokens']} greedy tokens after {self['prompt']!r}: {verdict}", ("model", "continuation"), rows
