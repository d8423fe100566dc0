"""S3's timestamps read by lamina itself (storage/s3.py): the instants botocore's parser gives."""

from __future__ import annotations

import pytest
from botocore.utils import parse_timestamp

from lamina.backend.engine.storage.s3 import parse_s3_timestamp


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-01T22:31:32.000Z",  # a listing's LastModified
        "2026-12-01T22:31:32Z",
        "2026-12-01T22:31:32.123456Z",
        "2026-12-01T23:31:32.5+01:00",
        "2026-12-01T22:31:32",  # no zone: UTC, as botocore takes it
        "Tue, 01 Dec 2026 22:31:32 GMT",  # a header's HTTP date
        "1764628292",  # seconds since the epoch
    ],
)
def test_the_same_instant_as_botocore(value: str) -> None:
    ours, theirs = parse_s3_timestamp(value), parse_timestamp(value)
    assert ours.tzinfo is not None
    assert ours.timestamp() == theirs.timestamp()
