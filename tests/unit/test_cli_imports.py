"""A plain command loads only what it needs: parsing `lamina backup ...` or `lamina restore ...`
leaves the catalog's SQLAlchemy, the filesystem parsers, croniter, botocore, gRPC and the TUI
unloaded (each costs start-up time that every small incremental would pay).

Checked in a fresh interpreter, on what is in ``sys.modules``: not a timing test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Modules that must not load before a plain command runs.
HEAVY = (
    "sqlalchemy",
    "alembic",
    "croniter",
    "lamina.backend.catalog.store",
    "lamina.backend.fsread",
    "lamina.backend.engine.extract",
    "lamina.backend.engine.fsview",
    "botocore",
    "boto3",
    "grpc",
    "textual",
    "kubernetes",
)

_PROBE = """
import json, sys
from lamina.backend.cli.main import build_parser
args = build_parser().parse_args(sys.argv[1:])
heavy = json.loads(sys.stdin.read())
print(json.dumps({"command": args.command,
                  "loaded": sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules))}))
"""

PLAIN_COMMANDS = [
    ["backup", "--repo", "s3://bucket/repo", "--volume", "vol", "disk.img"],
    [
        "backup",
        "--repo",
        "s3://bucket/repo",
        "--volume",
        "vol",
        "disk.img",
        "--changed-ranges",
        "ranges.json",
    ],
    ["restore", "--repo", "s3://bucket/repo", "0123abcd", "out.img"],
    ["points", "--repo", "/some/folder"],
]


@pytest.mark.parametrize("argv", PLAIN_COMMANDS, ids=lambda argv: "-".join(argv[:1] + argv[-1:]))
def test_parsing_a_plain_command_loads_no_heavy_module(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["command"] == argv[0]
    assert result["loaded"] == []


def test_the_probe_sees_a_loaded_module() -> None:
    """The check itself works: a name the probe's own process imports is reported."""
    done = subprocess.run(
        [sys.executable, "-c", "import sqlalchemy\n" + _PROBE, *PLAIN_COMMANDS[0]],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["loaded"] == ["sqlalchemy"]


# A client of `lamina serve` needs gRPC (and the file entries it shows), but none of the
# libraries the server does its work with.
CLIENT_HEAVY = (
    "sqlalchemy",
    "alembic",
    "croniter",
    "lamina.backend.catalog.store",
    "botocore",
    "boto3",
    "textual",
    "kubernetes",
)

_CLIENT_PROBE = """
import json, sys
import lamina.backend.service.remote
heavy = json.loads(sys.stdin.read())
print(json.dumps(sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules))))
"""


def test_a_server_client_loads_neither_the_database_layer_nor_the_s3_library() -> None:
    """`lamina backup --server ...` imports the remote service (and with it the schedules'
    plain values): SQLAlchemy, croniter and botocore stay unloaded in the client."""
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_PROBE],
        input=json.dumps(CLIENT_HEAVY),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
