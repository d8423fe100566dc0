"""A job-history catalog that cannot be written, for the tests of what that costs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lamina.backend.catalog import Catalog


@contextmanager
def read_only_sqlite_catalog(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An SQLite catalog made in ``made/``, seen read-only through ``shown/``: a read-only
    bind mount for root (who writes through any mode bits), mode bits otherwise. Yields
    the folder it was made in and the catalog's URL through the read-only view."""
    made, shown = tmp_path / "made", tmp_path / "shown"
    made.mkdir()
    shown.mkdir()
    Catalog.open(f"sqlite:///{made}/catalog.sqlite").close()
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(made), str(shown)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(shown)], check=True)
    else:
        (made / "catalog.sqlite").chmod(0o444)
        made.chmod(0o555)
        shown.rmdir()
        shown.symlink_to(made)
    try:
        yield made, f"sqlite:///{shown}/catalog.sqlite"
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(shown)], check=True)
        else:
            made.chmod(0o755)
