"""The package's architecture, checked on its source (ARCHITECTURE.md): subpackages import only their own layer
or lower ones, no import cycle of any form (top level, function-local, TYPE_CHECKING), small modules, a lazy
public API, and a dataset registry that the CLI reads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_smsp"
# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "device_runtime"),
    ("data",),
    ("models",),
    ("training",),
    ("pool",),
    ("transfer",),
    ("criteria",),
    ("adaptation",),
    ("pool.build",),
    ("devices",),
    ("export",),
    ("transport",),
    ("deploy",),
    ("cli", "__main__"),
)
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if "device_runtime" in relative.parts:  # a link to runtime/: the device's own package
            continue
        name = ".".join(relative.with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every edge_smsp module `name` imports, in any form and at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules and target != "edge_smsp.device_runtime":
                target = target.rpartition(".")[0]
            if target.startswith("edge_smsp") and target != name:
                found.add(target)
    return found


def _layer(module: str) -> int | None:
    """The layer index of a module (None: the root package, the public API, which may name anything)."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    for depth in (2, 1):
        key = ".".join(parts[:depth])
        for index, names in enumerate(LAYERS):
            if key in names:
                return index
    raise AssertionError(f"{module} belongs to no layer: add its subpackage to LAYERS and ARCHITECTURE.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_points_to_the_same_layer_or_below() -> None:
    upward = []
    for module, targets in _graph().items():
        here = _layer(module)
        for target in sorted(targets):
            there = _layer(target)
            if here is not None and (there is None or there > here):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_of_any_form() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "edge_smsp" / "models" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edge_smsp.deploy import steps\n"
        "def f():\n    from edge_smsp.cli import main\n"
    )
    modules = {"edge_smsp.models.probe": source, "edge_smsp.deploy.steps": source, "edge_smsp.cli": source}
    assert _imports("edge_smsp.models.probe", source, modules) == {"edge_smsp.deploy.steps", "edge_smsp.cli"}


def test_modules_stay_small() -> None:
    large = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not large, f"modules over {MAX_LINES} lines: {large}"


def test_public_api_is_lazy_and_complete() -> None:
    code = (
        "import sys, edge_smsp\n"
        "assert 'torch' not in sys.modules, 'import edge_smsp loaded torch'\n"
        "for name in edge_smsp.__all__:\n"
        "    assert getattr(edge_smsp, name) is not None, name\n"
        "print(len(edge_smsp.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20
    import edge_smsp

    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        edge_smsp.nosuch  # noqa: B018


def test_the_cli_reads_its_dataset_choices_from_the_registry() -> None:
    import argparse

    from edge_smsp.cli.args import add_task_arguments
    from edge_smsp.data import DATASETS

    parser = argparse.ArgumentParser()
    add_task_arguments(parser, classes=True)
    help_text = next(action.help for action in parser._actions if "--dataset" in action.option_strings)
    assert help_text == " | ".join(DATASETS)
