"""The layers of docs/ARCHITECTURE.md hold: imports go down, nothing imports in a cycle, and every
module imports alone (as ``import contend.staging`` must, with an empty ``contend/__init__``)."""

from __future__ import annotations

import ast
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGES = ("contend", "contend_demo")


def _modules() -> dict[str, Path]:
    """Every module of the distribution by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layers() -> dict[str, int]:
    """The layer of each module, read from the table in docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    layer_of: dict[str, int] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.match(r"\d+ ", cells[0]):
            continue
        layer = int(cells[0].split()[0])
        for name in re.findall(r"`([\w.*]+)`", cells[1]):
            if name.endswith(".*"):
                base = name[:-2]
                for module in MODULES:
                    if module == base or module.startswith(base + "."):
                        layer_of[module] = layer
            else:
                layer_of[name] = layer
    return layer_of


LAYERS = _layers()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str) -> Iterator[str]:
    """Names of modules `module` imports when it runs (at import or in a function), not those
    imported for type checking only."""
    is_package = MODULES[module].name == "__init__.py"
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            if len(submodules) < len(node.names):
                yield base  # a name defined by `base` itself
            yield from submodules
        stack.extend(ast.iter_child_nodes(node))


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of the distribution it makes Python execute by importing: the module
    and every package `__init__` on its way. Not the top packages' (the test of the layers is
    made as if they were empty; with its real ``__init__`` everything imports everything), nor
    the module's own packages' (they are loaded before it), unless it imports a name they
    define."""
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        targets: set[str] = set()
        for name in _imported(ast.parse(path.read_text()), module):
            parts = name.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i])
                if prefix in MODULES and prefix not in PACKAGES and prefix not in own | {module}:
                    targets.add(prefix)
            if name in MODULES and name != module:
                targets.add(name)
        edges[module] = targets
    return edges


EDGES = _edges()


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYERS)) == []
    assert sorted(set(LAYERS) - set(MODULES)) == [], "the table names modules that do not exist"


def test_imports_go_down_or_stay_in_their_layer() -> None:
    upward = [
        f"{m} (layer {LAYERS[m]}) imports {t} (layer {LAYERS[t]})"
        for m, targets in EDGES.items()
        for t in sorted(targets)
        if LAYERS[t] > LAYERS[m]
    ]
    assert upward == []


def test_no_module_imports_in_a_cycle() -> None:
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(EDGES[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert cycles == []


def _import_alone(module: str) -> str | None:
    """Import `module` in a forked interpreter where ``contend`` is an empty package; the
    error, or None."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        status = 0
        try:
            for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
                del sys.modules[name]
            top = module.split(".")[0]
            if top != "contend":
                __import__("contend")  # an application of the public API (the demo)
            empty = types.ModuleType(top)
            empty.__path__ = [str(SRC / top)]
            sys.modules[top] = empty
            __import__(module)
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return message or None if status else None


def test_every_module_imports_alone() -> None:
    import jinja2  # noqa: F401  (third-party imports are loaded once, before forking)
    import prometheus_client  # noqa: F401
    import pydantic  # noqa: F401
    import redis.asyncio  # noqa: F401

    failures = {
        module: error
        for module in sorted(MODULES)
        if module not in ("contend.__main__", *PACKAGES)
        and (error := _import_alone(module)) is not None
    }
    assert failures == {}
