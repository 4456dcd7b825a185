"""The code's shape: the family table is the only place that knows a family, and no module of
hyperclone/ imports another in a loop (imports inside functions included)."""
import ast
from pathlib import Path

from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from hyperclone.arch import FAMILIES

PACKAGE = Path(__file__).resolve().parent.parent / "hyperclone"
CLI = PACKAGE.parent / "cli"
# the table itself, and the testing helpers' tiny-config lines (one per family)
ALLOWED = {PACKAGE / "arch", PACKAGE / "testing.py"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every hyperclone module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in out if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the chain of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["hyperclone.goals"], "the import scan found nothing: it is broken"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_model_type_outside_the_family_table():
    known = set(CONFIG_MAPPING_NAMES) | set(FAMILIES)
    assert {"llama", "gemma3_text", "granitemoe"} <= known
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *CLI.rglob("*.py")]):
        if any(path == allowed or allowed in path.parents for allowed in ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert not offenders, "family knowledge outside hyperclone/arch/: " + ", ".join(offenders)


def test_every_subpackage_is_installed():
    """pyproject lists packages by hand: a package missing there imports from a checkout but not from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, found - listed


def test_the_api_is_imported_on_first_use():
    """`hyperclone --help` and `import hyperclone` load no torch (about 2 s); every public name still resolves
    to its function, also after a submodule of the same name (hyperclone.train, .grow, .plan) was imported."""
    import subprocess
    import sys

    import hyperclone

    help_run = subprocess.run([sys.executable, "-X", "importtime", "-m", "hyperclone_cli.app", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "grow" in help_run.stdout, help_run.stderr[-2000:]
    assert not [line for line in help_run.stderr.splitlines() if line.endswith("| torch")], "--help imported torch"
    check = ("import sys, hyperclone; assert 'torch' not in sys.modules; import hyperclone.train.loop, hyperclone.plan, hyperclone.verify;"
             "from hyperclone import train; print(sorted(n for n in hyperclone.__all__ if not callable(getattr(hyperclone, n))), train is hyperclone.train)")
    fresh = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert fresh.returncode == 0 and fresh.stdout.split() == ["[]", "True"], fresh.stdout + fresh.stderr[-2000:]
    assert set(hyperclone.__all__) <= set(dir(hyperclone)) and hyperclone.train.__module__ == "hyperclone.train.loop"
