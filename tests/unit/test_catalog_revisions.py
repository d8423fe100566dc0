"""The catalog opens without loading alembic when it is at the head revision, so it reads the
revisions from the migration files' names: alembic must agree with those names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from lamina.backend.catalog.store import MIGRATIONS, known_revisions, revisions


def test_file_names_give_alembics_revisions_in_order() -> None:
    assert known_revisions() == revisions()
    for path in sorted((MIGRATIONS / "versions").glob("[!_]*.py")):
        assigned = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                assert node.value is not None
                assigned[node.target.id] = ast.literal_eval(node.value)
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                assigned[node.targets[0].id] = ast.literal_eval(node.value)
        assert assigned["revision"] == path.name[:4], path.name


def test_a_catalog_at_the_head_opens_without_alembic(tmp_path: Path) -> None:

    url = f"sqlite:///{tmp_path}/c.sqlite"
    probe = (
        "import sys\n"
        "from lamina.backend.catalog import Catalog\n"
        f"Catalog.open({url!r}).close()\n"
        "first = 'alembic' in sys.modules\n"
        "for name in [n for n in sys.modules if n.startswith('alembic')]: del sys.modules[name]\n"
        f"Catalog.open({url!r}).close()\n"
        "print(first, 'alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]  # a new catalog migrates; an open one need not
