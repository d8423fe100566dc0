"""The checked-in SnapshotMetadata code: regenerated identically, and wire-compatible with the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from lamina.protos import snapshotmetadata_pb2 as pb
from lamina.protos import snapshotmetadata_pb2_grpc as pb_grpc

PROTOS = Path(__file__).resolve().parents[2] / "protos"
GENERATED = [
    f"{stem}{suffix}"
    for stem in ("snapshotmetadata", "lamina_v1")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
]


def test_regenerating_gives_exactly_the_checked_in_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        checked_in = (PROTOS / name).read_bytes()
        assert fresh == checked_in, f"protos/{name} differs from generated code: run make proto"


def test_generated_grpc_module_imports_messages_through_the_package() -> None:
    source = (PROTOS / "snapshotmetadata_pb2_grpc.py").read_text()
    assert "from lamina.protos import snapshotmetadata_pb2" in source
    assert getattr(pb_grpc, "lamina_dot_protos_dot_snapshotmetadata__pb2") is pb  # noqa: B009
    api_source = (PROTOS / "lamina_v1_pb2_grpc.py").read_text()
    assert "from lamina.protos import lamina_v1_pb2" in api_source


INT64 = FieldDescriptor.TYPE_INT64
INT32 = FieldDescriptor.TYPE_INT32
STRING = FieldDescriptor.TYPE_STRING
ENUM = FieldDescriptor.TYPE_ENUM
MESSAGE = FieldDescriptor.TYPE_MESSAGE

# The published interface (package snapshotmetadata): message -> {field: (number, type)}.
API_FIELDS = {
    "BlockMetadata": {"byte_offset": (1, INT64), "size_bytes": (2, INT64)},
    "GetMetadataAllocatedRequest": {
        "security_token": (1, STRING),
        "namespace": (2, STRING),
        "snapshot_name": (3, STRING),
        "starting_offset": (4, INT64),
        "max_results": (5, INT32),
    },
    "GetMetadataDeltaRequest": {
        "security_token": (1, STRING),
        "namespace": (2, STRING),
        "base_snapshot_id": (3, STRING),
        "target_snapshot_name": (4, STRING),
        "starting_offset": (5, INT64),
        "max_results": (6, INT32),
    },
    "GetMetadataAllocatedResponse": {
        "block_metadata_type": (1, ENUM),
        "volume_capacity_bytes": (2, INT64),
        "block_metadata": (3, MESSAGE),
    },
    "GetMetadataDeltaResponse": {
        "block_metadata_type": (1, ENUM),
        "volume_capacity_bytes": (2, INT64),
        "block_metadata": (3, MESSAGE),
    },
}


def test_messages_fields_and_enum_match_the_published_interface() -> None:
    file = pb.DESCRIPTOR
    assert file.package == "snapshotmetadata"
    assert set(file.message_types_by_name) == set(API_FIELDS)
    for message_name, fields in API_FIELDS.items():
        descriptor = file.message_types_by_name[message_name]
        assert descriptor.full_name == f"snapshotmetadata.{message_name}"
        got = {f.name: (f.number, f.type) for f in descriptor.fields}
        assert got == fields, message_name
    for response in ("GetMetadataAllocatedResponse", "GetMetadataDeltaResponse"):
        descriptor = file.message_types_by_name[response]
        blocks = descriptor.fields_by_name["block_metadata"]
        assert blocks.message_type is not None
        assert blocks.message_type.full_name == "snapshotmetadata.BlockMetadata"
        assert blocks.is_repeated
        kind = descriptor.fields_by_name["block_metadata_type"].enum_type
        assert kind is not None
        assert kind.full_name == "snapshotmetadata.BlockMetadataType"
    enum = file.enum_types_by_name["BlockMetadataType"]
    assert {v.name: v.number for v in enum.values} == {
        "UNKNOWN": 0,
        "FIXED_LENGTH": 1,
        "VARIABLE_LENGTH": 2,
    }


def test_service_has_the_two_server_streaming_calls() -> None:
    service = pb.DESCRIPTOR.services_by_name["SnapshotMetadata"]
    assert service.full_name == "snapshotmetadata.SnapshotMetadata"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"GetMetadataAllocated", "GetMetadataDelta"}
    for name, request in (
        ("GetMetadataAllocated", "GetMetadataAllocatedRequest"),
        ("GetMetadataDelta", "GetMetadataDeltaRequest"),
    ):
        method = methods[name]
        assert method.input_type.name == request
        assert method.output_type.name == request.replace("Request", "Response")
        assert method.server_streaming and not method.client_streaming
    source = (PROTOS / "snapshotmetadata_pb2_grpc.py").read_text()
    assert "'/snapshotmetadata.SnapshotMetadata/GetMetadataAllocated'" in source
    assert "'/snapshotmetadata.SnapshotMetadata/GetMetadataDelta'" in source


def test_bytes_on_the_wire_follow_the_field_numbers() -> None:
    # Field 1 varint 4096 is 08 80 20; field 2 varint 8192 is 10 80 40.
    assert pb.BlockMetadata(byte_offset=4096, size_bytes=8192).SerializeToString() == bytes.fromhex(
        "088020108040"
    )
    # Field 1 enum 2, field 2 varint 65536 (80 80 04), field 3 one embedded BlockMetadata.
    wire = bytes.fromhex("0802" + "10808004" + "1a06088020108040")
    response = pb.GetMetadataDeltaResponse.FromString(wire)
    assert response.block_metadata_type == pb.VARIABLE_LENGTH
    assert response.volume_capacity_bytes == 65536
    assert [(b.byte_offset, b.size_bytes) for b in response.block_metadata] == [(4096, 8192)]
