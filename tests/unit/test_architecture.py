"""Front ends reach the engine only through the service layer.

The rule is checked on the source: every import statement of the front-end packages,
relative ones resolved, against the modules they must not touch.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONT_ENDS = [ROOT / "backend" / "cli", ROOT / "backend" / "api", ROOT / "fs", ROOT / "tui"]
FORBIDDEN = (
    "boto3",
    "botocore",
    "kubernetes",
    "lamina.backend.engine.storage",
    "lamina.backend.engine.repository",
    "lamina.backend.engine.format",
    "lamina.backend.engine.pipelines",
)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "lamina." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
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
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_front_ends_import_only_the_service_layer() -> None:
    offenders = []
    for folder in FRONT_ENDS:
        for path in folder.rglob("*.py"):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The scanner itself works: a forbidden relative import is found."""
    (tmp_path / "tui").mkdir()
    bad = tmp_path / "tui" / "bad.py"
    bad.write_text("from ..backend import engine\nimport boto3\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        names = _imports(bad)
    finally:
        ROOT = saved
    assert "lamina.backend.engine" in names and "boto3" in names
