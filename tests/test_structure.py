"""The package's layers: every module imports on its own, no import cycle, and dependencies point one way.

commands -> runs (training, evaluation) -> engine and inference -> models and data -> foundation
(labels, config, fileio, ...). The graph is read from each module's module-level imports (those under
`if TYPE_CHECKING:` and inside functions are not edges: they run later or never).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "grefel"


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = module_names()


def module_path(name: str) -> Path:
    base = SRC.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> set[str]:
    """The grefel modules `name` imports when it is imported (module level, not under TYPE_CHECKING)."""
    tree = ast.parse(module_path(name).read_text())
    found: set[str] = set()

    def visit(body) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in (getattr(node, "body", []), getattr(node, "orelse", []),
                              getattr(node, "finalbody", []), *[h.body for h in getattr(node, "handlers", [])]):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "grefel")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "grefel":
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)

    visit(tree.body)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycle():
    state: dict[str, int] = {}   # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name)


def closure(roots: list[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(GRAPH[node])
    return seen


@pytest.mark.parametrize("layer", ["grefel.models", "grefel.inference", "grefel.data"])
def test_lower_layers_need_no_training_or_commands(layer):
    """Predicting needs no trainer: nothing models, inference or data import reads training state,
    runs the engine or registers commands."""
    roots = [m for m in MODULES if m == layer or m.startswith(layer + ".")]
    upper = ("grefel.training", "grefel.engine", "grefel.commands", "grefel.evaluation", "grefel.serve")
    reached = sorted(m for m in closure(roots) if m.startswith(upper))
    assert reached == [], f"{layer} imports {reached}"


# A fresh interpreter imports the heavy third-party libraries once, then forks one child per grefel module, which
# imports that module alone: each child starts with no grefel module loaded (what matters for import order and
# cycles) without paying torch's import time 70 times.
ISOLATED_IMPORTS = """
import importlib, os, sys, traceback
import cv2, numpy, torch, torch.nn, yaml, safetensors, matplotlib.figure, tqdm
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        failed.append(name)
print(" ".join(failed))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    proc = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *MODULES], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"failed alone: {proc.stdout.strip()}\n{proc.stderr[-3000:]}"


def test_predicting_loads_no_training_module():
    code = ("import sys, grefel.inference.recognizer, grefel.models.serving; "
            "print(sorted(m for m in sys.modules if m.startswith(('grefel.training', 'grefel.engine', "
            "'grefel.commands', 'grefel.evaluation'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip() == "[]"
