"""The package layout the architecture document describes: inference is one package that
export/ and the ROS node use, nothing but the console entry points imports a CLI (``mobius``,
``mobius-ros``), and no import circle in mobius_core or mobius_ros."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mobius_core", "mobius_ros")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions; importing
    ``a.b.c`` also runs ``a`` and ``a.b``."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in known and mod != name:
                    found.add(mod)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _within(graph: dict[str, set[str]], pkg: str) -> dict[str, set[str]]:
    """The part of ``graph`` inside package ``pkg``."""
    inside = {m for m in graph if m == pkg or m.startswith(pkg + ".")}
    return {m: graph[m] & inside for m in inside}


# One module and an import of it the scan must see in each package (lazy ones included),
# so an empty or broken scan cannot pass.
SEEN = {
    "mobius_core": ("mobius_core.modeling.text_encoder", "mobius_core.inference.prompts"),
    "mobius_ros": ("mobius_ros.cli", "mobius_ros.replay"),  # inside main()
}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_the_import_graph_has_no_circle(pkg):
    graph = _graph()
    module, dep = SEEN[pkg]
    assert dep in graph[module]  # the scan sees the package
    assert _cycles(_within(graph, pkg)) == []


def test_the_import_graph_of_both_packages_has_no_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("cli", ["mobius_core.cli", "mobius_ros.cli"])
def test_only_the_entry_points_import_the_cli(cli):
    """No module of either package imports a CLI, lazily or not: only the console scripts
    (setup.py) and the node executable (scripts/mobius_node.in) do, and ``python -m``."""
    graph = _graph()
    assert cli in graph
    users = sorted(m for m, deps in graph.items() if cli in deps)
    assert users == []
    for path in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "mobius_ros").glob("*.py"),
                 *(ROOT / "mobius_core").rglob("*.py")]:  # fmt: skip
        text = path.read_text()
        assert f"from {cli} import" not in text, path
        assert f"{cli}._" not in text, path


def test_export_and_the_node_use_inference_and_inference_does_not_use_export_at_import():
    graph = _graph()
    assert "mobius_core.inference.io_spec" in graph["mobius_core.export.onnx"]
    assert any(d.startswith("mobius_core.inference") for d in graph["mobius_ros.model"])
    assert not any(m.startswith("mobius_core.export") for m in graph["mobius_ros.model"])
    for name in ("io_spec", "prompts", "text", "backend", "ort_backend", "segmenter"):
        deps = graph[f"mobius_core.inference.{name}"]
        assert not any(d.startswith("mobius_core.export") for d in deps), (name, deps)


def test_inference_imports_neither_torch_nor_the_model():
    code = (
        "import sys\n"
        "import mobius_core.inference as inf\n"
        "from mobius_core.inference import ort_backend, text, trt_backend, segmenter, factory\n"
        "assert inf.build_segmenter and inf.validate_prompts\n"
        "print(sorted(m for m in ('torch', 'timm', 'mobius_core.modeling', 'mobius_core.cli')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
