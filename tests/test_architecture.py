"""The layering of docs/design.md §7, read from the source's import statements (ast).

Nodes are the sub-packages of ``prefrl`` (``learners``, ``data``, ``loops`` …)
and each top-level module (``prefrl.rollout``, ``prefrl.checkpoints`` …);
``envs/`` ships as ``prefrl.envs``. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prefrl"

# What a learner may import: pure math, no environment, loop or file format.
LEARNER_FORBIDDEN = ("prefrl.envs", "prefrl.rollout", "prefrl.loops", "prefrl.io",
                     "prefrl.checkpoints", "prefrl.checkpoint", "prefrl.training",
                     "prefrl.offline", "prefrl.sweeps", "prefrl.studies", "prefrl.report",
                     "prefrl.commands", "prefrl.bench", "prefrl.data.dataset",
                     "prefrl.data.trajectories", "mujoco", "gymnasium")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    for path in sorted((ROOT / "envs").rglob("*.py")):
        parts = ("prefrl", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from x import y`` gives x and x.y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _node(module: str) -> str | None:
    """The layer a module belongs to: ``prefrl.<sub-package>`` or the top-level module."""
    parts = module.split(".")
    if parts[0] != "prefrl" or len(parts) < 2:
        return None
    candidate = ".".join(parts[:2])
    return candidate if candidate in MODULES else None


def test_only_commands_import_commands():
    offenders = {name: sorted(m for m in imports if m.startswith("prefrl.commands"))
                 for name, imports in IMPORTS.items()
                 if not name.startswith(("prefrl.commands", "prefrl.cli"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_learners_import_no_environment_loop_or_file_io():
    offenders = {name: sorted(m for m in imports if m.startswith(LEARNER_FORBIDDEN))
                 for name, imports in IMPORTS.items() if name.startswith("prefrl.learners")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycle_between_layers():
    graph: dict[str, set[str]] = {}
    for name, imports in IMPORTS.items():
        src = _node(name)
        if src is None or src == "prefrl":
            continue
        for module in imports:
            dst = _node(module)
            if dst is not None and dst not in (src, "prefrl"):
                graph.setdefault(src, set()).add(dst)
    # Depth-first search for a back edge; report the cycle it closes.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_report_does_not_import_the_sweep_runners():
    report = {m for n, i in IMPORTS.items() if n.startswith("prefrl.report") for m in i}
    assert not {m for m in report
                if m.startswith(("prefrl.sweeps.execute", "prefrl.studies.cells"))}


def test_sweeps_schedule_without_jax():
    # spec, store and execute plan and run work; what a cell computes is prefrl.studies.
    # (execute only points JAX's compilation cache at a folder.)
    for name, imports in IMPORTS.items():
        if not name.startswith("prefrl.sweeps"):
            continue
        allowed = ("jax",) if name == "prefrl.sweeps.execute" else ()
        assert not {m for m in imports if m.split(".")[0] in ("jax", "flax", "optax")
                    and m not in allowed}, name
        assert not {m for m in imports
                    if m.startswith(("prefrl.studies", "prefrl.learners", "prefrl.loops"))}, name


def test_checkpoints_do_not_import_training_loops():
    imports = IMPORTS["prefrl.checkpoints"]
    assert not {m for m in imports if m.startswith(("prefrl.loops", "prefrl.offline",
                                                     "prefrl.training"))}


def _own_lines(node: ast.AST) -> int:
    """Lines of a function, its nested functions' own lines not counted."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    for sub in ast.walk(node):
        if sub is not node and isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
            lines -= set(range(sub.lineno, sub.end_lineno + 1))
    return len(lines)


def test_modules_and_functions_stay_small():
    # Small files split by role: no module over 500 lines, no function over 120.
    too_long, too_big = {}, {}
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 500:
            too_long[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _own_lines(node) > 120:
                too_big[f"{name}.{node.name}"] = _own_lines(node)
    assert too_long == {} and too_big == {}


def test_every_package_is_listed_for_a_non_editable_install():
    """A folder of modules missing from pyproject's ``packages`` vanishes from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {"prefrl." + ".".join(p.relative_to(PACKAGE).parts) if p != PACKAGE else "prefrl"
             for p in PACKAGE.rglob("*") if p.is_dir() and any(p.glob("*.py"))}
    found |= {"prefrl.envs." + ".".join(p.relative_to(ROOT / "envs").parts)
              if p != ROOT / "envs" else "prefrl.envs"
              for p in (ROOT / "envs").rglob("*") if p.is_dir() and any(p.glob("*.py"))}
    found.add("prefrl.envs")
    assert found - listed == set()
