"""The shape of the code, checked: small functions with few parameters, no import cycle, and the inference-speed
harness outside the pruning path's imports."""

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "secateurs"
MAX_LINES = 60
MAX_PARAMETERS = 8


def _modules() -> dict[str, Path]:
    """``secateurs.x.y`` -> its file (a package by its ``__init__.py``)."""
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = ["secateurs", *path.relative_to(SOURCE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _functions():
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SOURCE), node


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, node in _functions()
        if node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, "split these functions:\n" + "\n".join(long)


def test_no_function_takes_more_than_8_parameters():
    def count(arguments: ast.arguments) -> int:
        names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
        names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
        return len([name for name in names if name not in ("self", "cls")])

    many = [f"{path}:{node.lineno} {node.name} ({count(node.args)})" for path, node in _functions()]
    many = [line for line, (_, node) in zip(many, _functions(), strict=True) if count(node.args) > MAX_PARAMETERS]
    assert not many, "group these parameters (a settings dataclass):\n" + "\n".join(many)


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The secateurs modules ``module`` imports, anywhere in it (function-level imports count too), with the
    sub-packages whose ``__init__`` an import runs on the way (the top package's aside: it imports everything)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            names = [f"{target}.{alias.name}" for alias in node.names]
            found |= {name for name in names if name in modules} or ({target} if target in modules else set())
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(2, len(parts))}
        with_parents |= {parent for parent in parents if not module.startswith(f"{parent}.")}  # already running
    return with_parents - {module}


def test_no_import_cycle():
    modules = _modules()
    graph = {module: _imports(module, path, modules) for module, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_speed_harness_is_outside_the_pruning_path():
    code = (
        "import sys, secateurs, secateurs.cli; "
        "from secateurs.cli import build_parser; build_parser(); "
        "print([m for m in sys.modules if m.startswith('secateurs.bench.speed')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
