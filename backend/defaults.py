"""Where lamina looks when the user does not say: the embedded default set up by the demo."""

from __future__ import annotations

import os
from pathlib import Path

DEMO_DIR = Path("demo")


def default_repo() -> str | None:
    """$LAMINA_REPO, else the demo's repository when `make demo` ran in this folder."""
    if os.environ.get("LAMINA_REPO"):
        return os.environ["LAMINA_REPO"]
    demo = DEMO_DIR / "repo"
    return str(demo.absolute()) if (demo / "config").exists() else None


def default_local_root() -> str | None:
    """$LAMINA_LOCAL_ROOT, else the demo's local cluster when it exists in this folder."""
    if os.environ.get("LAMINA_LOCAL_ROOT"):
        return os.environ["LAMINA_LOCAL_ROOT"]
    demo = DEMO_DIR / "cluster"
    return str(demo.absolute()) if demo.is_dir() else None
