"""The layering contract: layers import downward only, no import cycle, no borrowing of private names.

Every ``import`` in the package counts, including those inside functions. Layers, bottom up:

    0  errors, version
    1  sql        (quoting, names, builders, dialects: no queries run)
    2  io         (sources, writes, transactions, progress)
    3  ds | model (siblings: neither imports the other)
    4  lds | views
    5  api | spark (squash() and glm() dispatch between the layers above | momentize on Spark, generate here)
    6  baselines
    7  frontends
    8  the package root and ``__main__`` (the public facade; nothing imports it)

A module may import modules of lower layers and of its own subpackage (without cycles).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "duckquash"
LAYERS = {"errors": 0, "version": 0, "sql": 1, "io": 2, "ds": 3, "model": 3, "lds": 4, "views": 4, "api": 5, "spark": 5,
          "baselines": 6, "frontends": 7, "__init__": 8, "__main__": 8}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = ("duckquash",) + rel.parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(name: str, path: pathlib.Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = _package(name, path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
            if subs:  # ``from . import pipeline``: the submodules themselves are imported
                found += [(s, [], node.lineno) for s in subs]
                names = [n for n in names if f"{mod}.{n}" not in MODULES]
            if names or not subs:
                found.append((mod, names, node.lineno))
    return [f for f in found if f[0] == "duckquash" or f[0].startswith("duckquash.")]


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: not in any layer; add its folder to LAYERS in tests/test_layout.py"
    return LAYERS[top], top


def _edges() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in _imports(name, path) if m != name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_run_downward_only():
    bad = []
    for name, path in MODULES.items():
        level, top = _layer(name)
        for mod, _, line in _imports(name, path):
            if mod not in MODULES and mod.rpartition(".")[0] in MODULES:
                mod = mod.rpartition(".")[0]  # ``from pkg.mod import name``
            other, other_top = _layer(mod)
            if other_top == top and top not in ("__init__", "__main__"):
                continue  # within one subpackage (cycles are checked below)
            if not other < level:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {mod} (layer {other} >= {level})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = _edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_private_names_from_other_modules():
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} takes {private} from {mod}")
        # module._name through an imported module alias
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                aliases |= {a.asname or a.name for a in node.names
                            if any(m.endswith("." + a.name) for m in MODULES)}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("duckquash")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("detector", ["layers", "cycles", "private"])
def test_the_checks_catch_violations(tmp_path, monkeypatch, detector):
    """The contract is not vacuous: an upward import, a cycle and a borrowed private name, planted in a
    copy, are found."""
    import shutil

    copy = tmp_path / "duckquash"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    errors = copy / "errors.py"
    planted = "from .api import glm\n" if detector == "layers" else ""
    if detector == "private":
        planted = "\ndef f():\n    from .sql.quote import _hidden\n"
    if detector == "cycles":
        (copy / "sql" / "build.py").write_text((copy / "sql" / "build.py").read_text() + "\nfrom . import names\n")
        (copy / "sql" / "names.py").write_text((copy / "sql" / "names.py").read_text() + "\nfrom . import build\n")
    else:
        errors.write_text(errors.read_text() + "\n" + planted)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "ROOT", copy)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "MODULES", _modules())
    check = {"layers": test_imports_run_downward_only, "cycles": test_no_import_cycle,
             "private": test_no_private_names_from_other_modules}[detector]
    with pytest.raises(AssertionError):
        check()


def test_the_core_does_not_import_pyspark():
    """pyspark is an optional extra: importing duckquash (and even duckquash.spark) does not load it."""
    import subprocess
    import sys

    code = "import sys, duckquash, duckquash.spark; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "False"
