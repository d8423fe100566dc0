"""`lamina demo` for the front ends: the demo drives the service like any user would."""

from __future__ import annotations


def run_demo(directory: str) -> int:
    """Build the demo (a local cluster, a repository, a chain of points) under ``directory``."""
    from ..demo import run_demo as run

    return run(directory)
