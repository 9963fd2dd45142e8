"""The shape of src/convprop: no circle of imports among its modules, and no source file over 600 lines."""

from __future__ import annotations

import ast
import os

from runner import ROOT

SRC = os.path.join(ROOT, "src")
PACKAGE = os.path.join(SRC, "convprop")
MAX_LINES = 600


def modules() -> dict[str, str]:
    """{dotted module name: file} of every .py file under src/convprop (a package is its __init__)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the convprop modules it imports}, at module level or inside functions.  `from P import
    name` is an import of P.name where that is a module, else of P."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_import_graph_finder_sees_a_circle_and_function_level_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "convprop.distributed" in graph["convprop.run.core"]  # (from .. import distributed)
    assert "convprop.errors" in graph["convprop.distributed.data_parallel"]  # (from ..errors import …)
    assert "convprop.functional" in graph["convprop.train"]  # predict's import inside the function


def test_no_module_of_convprop_imports_itself_through_others():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "a circle of imports: " + " → ".join(cycle)
    assert not any(m.startswith("convprop.distributed") for m in graph["convprop.train"])  # fit takes step=


def test_no_source_file_is_over_600_lines():
    sizes = {os.path.relpath(p, SRC): sum(1 for _ in open(p, encoding="utf-8")) for p in modules().values()}
    over = {p: n for p, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines: {over}"


# docs/architecture.md, room by room: what each room of src/convprop may import (besides the leaves)
LEAVES = {"errors", "_files", "_extras", "safe_json", "random", "allocator"}
ALLOWED = {
    "functional": set(),
    "gradcheck": set(),
    "nn": {"functional"},
    "optim": {"nn"},
    "models": {"nn"},
    "data": {"functional"},
    "train": {"nn", "optim", "functional"},
    "distributed": {"train", "nn", "optim"},
    "checkpoint": {"nn", "optim", "models", "data"},  # (data: the input an old checkpoint implies)
    "weights": {"nn"},
    "run": {"train", "distributed", "checkpoint", "weights", "data", "models", "nn", "optim", "plots"},
    "plots": {"nn", "train", "data", "steps", "functional"},
    "steps": {"nn"},
    "explain": {"functional", "nn", "gradcheck"},
    "onnx": {"nn", "functional"},
    "deploy": {"nn", "data", "onnx", "weights", "checkpoint"},
    "serve": {"run", "train", "explain", "checkpoint", "data", "models", "nn", "optim", "functional", "steps"},
    "cli": None,  # the top: anything
    "__main__": {"cli"},
    "convprop": {"functional", "weights", "onnx"},  # the package's own __init__ (lazy attributes)
}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "convprop"


def test_each_room_imports_only_what_docs_architecture_allows():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    problems = []
    for m, targets in sorted(import_graph().items()):
        r = room(m)
        if r in LEAVES:
            problems += [f"{m} (a leaf) imports {t}" for t in sorted(targets)]
            continue
        assert r in ALLOWED, f"{r} is a room docs/architecture.md does not describe: add its paragraph"
        if r not in ("convprop", "__main__"):
            assert f"**{r}" in doc, f"docs/architecture.md has no paragraph on {r}"
        allowed = ALLOWED[r]
        if allowed is not None:
            problems += [f"{m} imports {t}" for t in sorted(targets)
                         if room(t) != r and room(t) not in LEAVES and room(t) not in allowed]
    assert not problems, "imports docs/architecture.md does not allow: " + "; ".join(problems)
