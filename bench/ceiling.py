"""The S3 ceiling: how fast plain boto3 moves the volume's data with nothing else to do."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import botocore.config
from volume import data_ranges

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

OBJECT_SIZE = 4 * 1024 * 1024
THREADS = 8


@dataclass(frozen=True)
class Transfer:
    keys: list[str]
    bytes: int
    seconds: float


def s3_client(env: dict[str, str], connections: int = THREADS * 2) -> S3Client:
    """A client configured like a tuned uploader: no per-request checksums, enough sockets."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=botocore.config.Config(
            max_pool_connections=connections,
            retries={"max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def bucket_bytes(client: S3Client, bucket: str) -> int:
    """Total size of every object in a bucket: what a tool really stored."""
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(int(obj["Size"]) for obj in page.get("Contents", []))
    return total


def put_objects(image: Path, client: S3Client, bucket: str) -> Transfer:
    """PUT the image's allocated data as 4 MiB objects from 8 threads."""
    pieces: list[tuple[int, int]] = []
    for start, length in data_ranges(image):
        for offset in range(start, start + length, OBJECT_SIZE):
            pieces.append((offset, min(OBJECT_SIZE, start + length - offset)))
    keys = [f"ceiling/{i:08d}" for i in range(len(pieces))]
    fd = os.open(image, os.O_RDONLY)
    try:

        def put(i: int) -> None:
            offset, length = pieces[i]
            client.put_object(Bucket=bucket, Key=keys[i], Body=os.pread(fd, length, offset))

        started = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(put, range(len(pieces))))
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    return Transfer(keys, sum(length for _, length in pieces), seconds)


def get_objects(client: S3Client, bucket: str, keys: list[str]) -> Transfer:
    """GET every object from 8 threads, reading each body whole (and dropping it)."""

    def get(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        fetched = sum(pool.map(get, keys))
    return Transfer(keys, fetched, time.perf_counter() - started)
