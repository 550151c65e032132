"""The import layers: faces on services on models on the base; migrations import no package module.

A module may import its own layer and the layers below, never one above, so
the base can be read (and tested) without a model, a model without a
service, and nothing but a face knows the command line. Layers are given by
module patterns, so a new ``models/x.py`` or ``history/x.py`` fits without
an edit here; a module that no pattern covers fails the test until it is
given a layer. Imports inside functions and under TYPE_CHECKING count too.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stream_state"
MIGRATIONS = ROOT / "migrations"

# Top to bottom. Names are relative to stream_state; fnmatch patterns.
LAYERS: list[tuple[str, list[str]]] = [
    # What users call; nothing in the package imports them. The package's
    # __init__ is the front door (it re-exports the manager's vocabulary).
    (
        "face",
        ["__init__", "__main__", "cli", "cli.*", "cli_output", "demo", "aio", "gst", "gst.*", "timeline*"],
    ),
    # Orchestrate several models; hold no state of their own.
    (
        "service",
        [
            "restore",
            "maintenance",
            "retention",
            "history",
            "history.*",
            "check",
            "rollups",
            "sessions",
            "compaction",
            "segment_runs",
            "invariants",
            "tick",
            "coalesce",
            "clock",
        ],
    ),
    # Every table, one module per aggregate; models import the base, never a service.
    ("model", ["models", "models.*"]),
    # No model, no service.
    (
        "base",
        [
            "backends",
            "database",
            "fields",
            "errors",
            "validate",
            "timeutil",
            "redact",
            "states",
            "transitions",
            "pwtypes",
            "probe",
            "codec",
            "pgwatch",
            "backups",
            "dbthreads",
        ],
    ),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> str | None:
    for layer, patterns in LAYERS:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return layer
    return None


def imported_modules(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports (relative to stream_state), anywhere in the file."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name != "__init__" else []
    package = here if is_package else here[:-1]
    found: set[str] = set()

    def add(target: list[str]) -> None:
        dotted = ".".join(target)
        found.add(dotted if dotted in MODULES else "__init__" if not target else dotted)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "stream_state" or alias.name.startswith("stream_state."):
                    add(alias.name.split(".")[1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "stream_state" or node.module.startswith("stream_state.")):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                # ``from . import history`` imports a module; ``from .x import name`` a name of x.
                sub = ".".join([*target, alias.name])
                add(sub.split(".") if sub in MODULES else target)
    found.discard(name)
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in MODULES if layer_of(name) is None)
    assert unplaced == [], f"give these modules a layer in tests/test_layers.py: {unplaced}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, path in MODULES.items():
        layer = layer_of(name)
        if layer is None:
            continue
        for target in sorted(imported_modules(name, path)):
            target_layer = layer_of(target)
            if target_layer is not None and RANK[target_layer] < RANK[layer]:
                upward.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert upward == []


@pytest.mark.parametrize("path", sorted(MIGRATIONS.glob("*.py")), ids=lambda p: p.name)
def test_a_migration_imports_no_package_module(path):
    # Frozen: a migration must build the same schema however the models change later.
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "stream_state" for a in node.names), ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 1, f"{ast.unparse(node)} reaches into the package"
            assert (node.module or "").split(".")[0] != "stream_state", ast.unparse(node)


def test_the_scanner_sees_relative_absolute_and_lazy_imports(tmp_path):
    # The contract is only as good as its scanner: a service that imports the CLI is caught.
    source = (
        "from . import history\n"
        "from .models.base import locked\n"
        "import stream_state.cli\n"
        "def late():\n"
        "    from .demo import run_demo\n"
        "    from .. import something_else\n"
    )
    fake = PACKAGE / "restore.py"
    probe = tmp_path / "restore.py"
    probe.write_text(source)
    found = imported_modules("restore", probe)
    assert {"history", "models.base", "cli", "demo"} <= found
    assert fake.exists()
