"""The notebook API (tables in Jupyter, a verify histogram, side-by-side generations, metrics as a
DataFrame) and notebooks/quickstart.ipynb, executed end to end by a real Jupyter kernel."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import hyperclone

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_results_display_as_tables_and_plots(tiny, tmp_path):
    src = tiny("qwen3_moe")
    growth = hyperclone.plan(src, dict(width=2, moe={"clone": 2}))
    html = growth._repr_html_()
    assert "<table" in html and "hidden size" in html and "4 (top-2)" in html and "8 (top-4)" in html
    assert growth.__rich__().row_count == len(growth.rows()) + 1  # and the bytes written

    grown = hyperclone.grow(src, dict(width=2, moe={"clone": 2}), tmp_path / "g", progress=False)
    result = hyperclone.verify(src, grown)
    assert isinstance(result, dict) and "PASS" in result._repr_html_()
    assert len(result["per_token_max_abs_diff"]) == result["tokens"]
    assert max(result["per_token_max_abs_diff"]) == result["max_abs_diff"]
    result.plot(tmp_path / "diff.png")
    assert (tmp_path / "diff.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(json.dumps(result)) == dict(result)  # still plain JSON for scripts

    info = hyperclone.inspect(grown)
    assert "qwen3_moe" in info._repr_html_() and info["experts"] == 8


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_compare_generates_the_same_text(noise, tiny, tmp_path):
    src = tiny("llama", vocab_size=300)  # > 256: byte tokens stand for themselves
    grown = hyperclone.grow(src, dict(width=2, noise=noise), tmp_path / "g", progress=False)
    shown = hyperclone.compare(src, grown, prompt="def main(", max_new_tokens=8)
    assert shown["identical"] and len(shown["source_tokens"]) == 8, shown
    assert "identical" in shown._repr_html_()
    other = hyperclone.compare(src, tiny("llama", vocab_size=300, seed=5), prompt="def main(", max_new_tokens=8)
    assert not other["identical"]  # a different model: the check can fail


def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERCLONE_SOURCE", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with its outputs stripped"
    NotebookClient(nb, timeout=170, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any("hidden size" in h for h in html) and any("PASS" in h for h in html) and any("identical" in h for h in html)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the histogram and the loss curve
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # train's live progress bar
