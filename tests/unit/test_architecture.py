"""Front ends reach the backend only through the service layer, and the engine never reaches
back into the service.

The rule is an allowlist, checked on the source: every import statement of the front-end
packages (the CLI, the gRPC API server, the FUSE adapter, the TUI), relative ones resolved,
must name the standard library, a UI or transport library, the front end's own package, or
one of the few backend modules every front end may use. Anything else is reported.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# folder -> the package it installs as (pyproject.toml's package-dir mapping)
FRONT_ENDS = {
    "backend/cli": "lamina.backend.cli",
    "backend/api": "lamina.backend.api",
    "fs": "lamina.fs",
    "tui": "lamina.tui",
}

# What every front end may import of lamina: the service package and the shared leaves.
SHARED = (
    "lamina.backend.service",
    "lamina.backend.errors",
    "lamina.backend.units",
    "lamina.backend.progress",
    "lamina.backend.display",
    "lamina.backend.__version__",
)

# Third-party libraries a front end may use: UI, transport, FUSE. Not boto3, kubernetes ...
LIBRARIES = ("textual", "rich", "grpc", "grpc_health", "grpc_reflection", "google.protobuf")

# Per front end, beyond SHARED and its own package.
EXTRA = {
    "lamina.backend.api": ("lamina.protos",),
    # The CLI is the process entry point of every front end: `lamina serve` starts the API
    # server, `lamina tui` the TUI and `lamina mount` the FUSE adapter.
    "lamina.backend.cli": (
        "lamina.backend.api.server",
        "lamina.backend.api.auth",
        "lamina.tui",
        "lamina.fs.mount",
    ),
    "lamina.fs": ("mfusepy",),
}

# Imports still pending, each with why; this list only shrinks. (The gRPC client and its
# conversion now live in the service package, so nothing is pending.)
PENDING: dict[tuple[str, str], str] = {}


def _imports(path: Path, package: str) -> list[str]:
    """Every name an import statement of ``path`` (a module of ``package``) brings in:
    ``import a.b`` gives ``a.b``, ``from a import b`` gives ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _allowed(name: str, front_end: str) -> bool:
    if name.split(".")[0] in sys.stdlib_module_names:
        return True
    return _within(name, (front_end, *SHARED, *LIBRARIES, *EXTRA.get(front_end, ())))


def _package_of(path: Path, root: Path, package: str, folder: str) -> str:
    inner = path.relative_to(root / folder).with_suffix("").parts[:-1]
    return ".".join((package, *inner))


def offenders(root: Path) -> list[str]:
    found = []
    for folder, package in FRONT_ENDS.items():
        for path in sorted((root / folder).rglob("*.py")):
            where = str(path.relative_to(root))
            for name in _imports(path, _package_of(path, root, package, folder)):
                if not _allowed(name, package) and (where, name) not in PENDING:
                    found.append(f"{where} imports {name}")
    return found


def test_front_ends_import_only_the_service_layer() -> None:
    found = offenders(ROOT)
    assert not found, "\n".join(found)


def test_pending_exceptions_are_still_needed() -> None:
    """An exception whose import went away is dropped from PENDING, so the list shrinks."""
    used = set()
    for folder, package in FRONT_ENDS.items():
        for path in (ROOT / folder).rglob("*.py"):
            where = str(path.relative_to(ROOT))
            for name in _imports(path, _package_of(path, ROOT, package, folder)):
                used.add((where, name))
    assert not set(PENDING) - used, sorted(set(PENDING) - used)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker works: deep relative imports, a storage client and a sibling front end's
    internals are found; the service, the shared leaves and the stdlib pass."""
    (tmp_path / "tui" / "screens").mkdir(parents=True)
    (tmp_path / "backend" / "cli").mkdir(parents=True)
    (tmp_path / "backend" / "api").mkdir(parents=True)
    (tmp_path / "fs").mkdir()
    (tmp_path / "tui" / "screens" / "bad.py").write_text(
        "import os\n"
        "import boto3\n"
        "from lamina.backend.service import Service\n"
        "from ...backend.engine import repository\n"
        "from ...backend.kube.cluster import KubeCluster\n"
        "from ..widgets import Table\n"
    )
    (tmp_path / "backend" / "cli" / "bad.py").write_text(
        "from ..display import printable\n"
        "from ..fsread import Entry\n"
        "from ..api.tasks import TaskBoard\n"
        "from .common import print_json\n"
    )
    assert offenders(tmp_path) == [
        "backend/cli/bad.py imports lamina.backend.fsread.Entry",
        "backend/cli/bad.py imports lamina.backend.api.tasks.TaskBoard",
        "tui/screens/bad.py imports boto3",
        "tui/screens/bad.py imports lamina.backend.engine.repository",
        "tui/screens/bad.py imports lamina.backend.kube.cluster.KubeCluster",
    ]


def test_the_engine_never_imports_the_service() -> None:
    """The engine serves the service, never the other way round (no circle through fsview)."""
    found = []
    for path in sorted((ROOT / "backend" / "engine").rglob("*.py")):
        package = _package_of(path, ROOT, "lamina.backend.engine", "backend/engine")
        for name in _imports(path, package):
            if _within(name, ("lamina.backend.service", *FRONT_ENDS.values())):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not found, "\n".join(found)
