"""The package's layers point one way: no import cycle between modules or between its rooms.

A room is a top-level module or subpackage of camjax (camjax.cam, camjax.train, ...). Imports
inside functions count: one written there to dodge a cycle is still a cycle.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "camjax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The camjax modules `path` imports anywhere in its body (module level or not)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from camjax.x import y` imports module camjax.x.y when y is a module, else camjax.x.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] if the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "camjax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "a.py").write_text("def f():\n    from camjax.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n")
    modules = {"camjax.sub.a", "camjax.sub.b"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        assert imported_modules(pkg / "sub" / "a.py", modules) == {"camjax.sub.b"}
        assert imported_modules(pkg / "sub" / "b.py", modules) == {"camjax.sub.a"}
    finally:
        PACKAGE = saved


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_rooms():
    graph: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        if module == "camjax":  # the package's facade re-exports; it is nobody's dependency
            continue
        targets = {room(m) for m in imports if m != "camjax"} - {room(module)}
        graph.setdefault(room(module), set()).update(targets)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle between rooms: " + " -> ".join(cycle)
