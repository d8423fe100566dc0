"""Regenerate the Python code of lamina's .proto files (run by `make proto`).

    python protos/generate.py [--out DIR]

Each .proto in PROTOS is compiled with grpcio-tools under the virtual path lamina/protos/, so
the generated gRPC module imports its message module as `lamina.protos.<name>_pb2`, which is
where the installed package puts it. Type stubs (.pyi) come from the mypy-protobuf plugins.
Without --out the files are written beside the .proto sources (only when they changed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# The import path of PROTO_DIR once installed.
VIRTUAL_DIR = "lamina/protos"
# Paths relative to PROTO_DIR: the CSI SnapshotMetadata API and lamina's own API (lamina.v1).
PROTOS = ["snapshotmetadata.proto", "lamina_v1.proto"]
GENERATED_SUFFIXES = ["_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"]


def _plugin(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"generate.py: {name} not found; install the dev dependencies (mypy-protobuf)")
    return found


def generated_names(proto: str) -> list[str]:
    stem = proto.removesuffix(".proto")
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir`` (same relative layout). Returns the files written."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="lamina-protoc-") as tmp:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{VIRTUAL_DIR}={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--mypy_out={tmp}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out={tmp}",
            *(f"{VIRTUAL_DIR}/{proto}" for proto in PROTOS),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"generate.py: protoc failed:\n{result.stdout}{result.stderr}")
        for proto in PROTOS:
            for name in generated_names(proto):
                source = Path(tmp) / VIRTUAL_DIR / name
                target = out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                data = source.read_bytes()
                if not target.exists() or target.read_bytes() != data:
                    target.write_bytes(data)
                    written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the Python code of lamina's protos.")
    parser.add_argument(
        "--out", type=Path, default=PROTO_DIR, help="output folder (default: protos/)"
    )
    args = parser.parse_args(argv)
    written = generate(args.out)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
