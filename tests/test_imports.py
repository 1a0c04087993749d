"""The package's modules import each other without cycles.

A cycle hides until someone imports the modules in the other order (or moves a function-level
import to the top), so every import counts here: module-level and inside functions. The edge
goes to the module named by the import, not to the packages above it: a package's __init__ is
already in sys.modules while its submodules import each other, so that is no cycle.
"""

import ast
import pkgutil
from pathlib import Path

import selfcorrect

PACKAGE = selfcorrect.__name__


def package_modules() -> dict[str, Path]:
    """Every module of the package (packages as their __init__.py), by dotted name."""
    root = Path(selfcorrect.__file__).parent
    found = {PACKAGE: root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix=PACKAGE + "."):
        parts = info.name.split(".")[1:]
        path = root.joinpath(*parts)
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module `name` (at `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert {"selfcorrect.cli", "selfcorrect.tasks", "selfcorrect.verify.sandbox"} <= set(graph)
    assert "selfcorrect.config" in graph["selfcorrect.cli"]         # from . import config as C
    assert "selfcorrect.methods" in graph["selfcorrect.cli"]        # inside a function
    assert "selfcorrect.tasks.base" in graph["selfcorrect.rollout"]  # from .tasks.base import ...
    assert "selfcorrect.sft" in graph["selfcorrect.demo_model"]     # absolute import


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
