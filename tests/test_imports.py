"""The package's imports run one way (docs/design.md, "Which module may import which?"): the steps
import downward only, catalog -> download -> convert -> lake_file -> warehouses/ -> flows ->
backfill, and no module reaches itself through its imports. Every import of a pipeline module is
counted, at the top of a file, inside a function or under TYPE_CHECKING alike: an import moved into
a function still ties the two modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# The steps a month travels through, lowest first, with what each step's module builds on
# (lake: the layout and record the steps share; zone_shapes and legacy: what convert uses for the
# legacy months).
STEPS = [
    "pipeline.download",
    "pipeline.lake",
    "pipeline.zone_shapes",
    "pipeline.legacy",
    "pipeline.convert",
    "pipeline.lake_file",
    "pipeline.warehouses",
    "pipeline.flows",
    "pipeline.backfill",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The pipeline modules ``path`` imports, wherever in the file (``from pipeline import x``
    counted as pipeline.x when x is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in MODULES and name != module_name(path)}


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}
GRAPH = {module_name(path): imported(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}


def step_of(module: str) -> int | None:
    for rank, step in enumerate(STEPS):
        if module == step or module.startswith(step + "."):
            return rank
    return None


def test_a_step_imports_no_step_above_it():
    upward = [
        (module, other)
        for module, others in GRAPH.items()
        for other in others
        if step_of(module) is not None and step_of(other) is not None and step_of(other) > step_of(module)
    ]

    assert upward == []


def circles() -> list[list[str]]:
    """Each module that reaches itself through the imports, with the way round."""
    found = []
    for start in sorted(GRAPH):
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, way = stack.pop()
            for other in sorted(GRAPH.get(module, ())):
                if other == start:
                    found.append(way + [start])
                    stack.clear()
                    break
                if other not in seen:
                    seen.add(other)
                    stack.append((other, way + [other]))
    return found


def test_no_module_reaches_itself_through_its_imports():
    assert circles() == []


def test_errors_is_the_lowest_module():
    """Every module that raises an expected failure imports errors.PipelineError, so errors.py
    imports none of them (it listed them once, and the sinks that import it closed a circle)."""
    assert GRAPH["pipeline.errors"] == set()


def test_the_lake_and_convert_circle_of_issue_28_is_gone():
    """The concrete case: lake.py held the LakeFile task (importing convert), and convert, legacy
    and zone_shapes imported each other through it."""
    assert [way for way in circles() if {"pipeline.lake", "pipeline.convert"} & set(way)] == []
