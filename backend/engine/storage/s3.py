"""S3 and S3-compatible object stores, through botocore (the core of boto3).

The standard AWS configuration applies: environment variables, profiles and
``AWS_ENDPOINT_URL``. Every write is a single PUT, so objects appear whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session
import botocore.utils

from ...errors import StorageUnavailable
from . import metering
from .base import (
    ObjectInfo,
    ObjectNotFound,
    ShortRead,
    Storage,
    StorageError,
    check_key,
    check_prefix,
    check_range,
    check_span,
)

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _meter_request(request: Any, operation_name: str = "", **_: Any) -> None:
    body = request.body
    if isinstance(body, (bytes, bytearray)):
        up = len(body)
    elif hasattr(body, "seek") and hasattr(body, "tell"):
        here = body.tell()
        up = body.seek(0, 2) - here
        body.seek(here)
    else:
        up = 0
    attempt = int(getattr(request, "context", {}).get("retries", {}).get("attempt", 1))
    metering.record(metering.s3_operation(operation_name, request.method), up=up, retry=attempt > 1)


def parse_s3_timestamp(value: str) -> datetime:
    """A timestamp of an S3 answer. Listings give ISO 8601 ('2026-12-01T22:31:32.000Z'), read
    here by the standard library: botocore's default parser (dateutil) costs about 0.2 ms a
    key, 6 s of a 30,000-key listing. Anything else (HTTP dates in headers) goes to it."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return botocore.utils.parse_timestamp(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class S3Storage(Storage):
    meters_itself = True  # per HTTP attempt, in botocore (see _meter_request)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        max_connections: int = 32,
        max_attempts: int = 5,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        client: Any = None,
    ) -> None:
        """``max_attempts`` counts the first try; botocore retries within it, with backoff."""
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if client is None:
            config = botocore.config.Config(
                max_pool_connections=max_connections,
                retries={"max_attempts": max_attempts, "mode": "adaptive"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # Checksums on every PUT/GET cost CPU; pieces carry their own hashes.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            # botocore's own session: boto3's would import s3transfer too, start-up for nothing.
            session = botocore.session.get_session()
            session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=parse_s3_timestamp
            )
            client = session.create_client(
                "s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), config=config
            )
        self.client = client
        # Every HTTP attempt (botocore's retries too) counts for the job that makes it.
        self.client.meta.events.register("request-created.s3", _meter_request)
        # A HEAD answer has no body, so a missing bucket looks like a missing object; the
        # first such answer is checked against the bucket once.
        self._bucket_seen = False

    def _key(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def _fail(self, e: Exception, what: str, key: str) -> Exception:
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                return ObjectNotFound(key)
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {self._endpoint()}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return StorageError(
                    f"S3 at {self._endpoint()} refused {what} {key}: {code}"
                    " (check the credentials and their permissions)"
                )
            return StorageError(f"S3 {what} {key} failed: {code} {e}")
        if isinstance(
            e,
            (
                botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ConnectionClosedError,
            ),
        ):
            return StorageUnavailable(f"S3 endpoint {self._endpoint()} is unreachable")
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return StorageError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
            )
        if isinstance(e, botocore.exceptions.BotoCoreError):
            return StorageError(f"S3 {what} {key} failed: {e}")
        return e

    def _endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        s3_key = self._key(key)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": s3_key, "Body": data}
        if retain_until is not None:
            args["ObjectLockMode"] = "COMPLIANCE"
            args["ObjectLockRetainUntilDate"] = datetime.fromtimestamp(retain_until, UTC)
        if if_absent:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
            return True
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if if_absent and code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._fail(e, "put", key) from e
        except Exception as e:
            raise self._fail(e, "put", key) from e

    def get(self, key: str) -> bytes:
        s3_key = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=s3_key)
            data = bytes(response["Body"].read())
            metering.record("", down=len(data))
            return data
        except Exception as e:
            raise self._fail(e, "get", key) from e

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        s3_key = self._key(key)
        check_span(key, offset, length)
        if length == 0:
            # An empty Range header is not valid HTTP; still say whether the object exists.
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(key)
            return check_range(key, b"", offset, length)
        try:
            response = self.client.get_object(
                Bucket=self.bucket,
                Key=s3_key,
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            data = bytes(response["Body"].read())
            metering.record("", down=len(data))
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                raise ShortRead(
                    f"short read of {key}: wanted {length} bytes at offset {offset},"
                    " which is past its end"
                ) from None
            raise self._fail(e, "get", key) from e
        except Exception as e:
            raise self._fail(e, "get", key) from e
        return check_range(key, data, offset, length)

    def head(self, key: str) -> ObjectInfo | None:
        s3_key = self._key(key)
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=s3_key)
        except Exception as e:
            err = self._fail(e, "head", key)
            if not isinstance(err, ObjectNotFound):
                raise err from e
            if not self._bucket_seen:
                self._check_bucket()
            return None
        self._bucket_seen = True
        return ObjectInfo(key, int(r["ContentLength"]), r["LastModified"].timestamp())

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {self._endpoint()}"
                ) from None
            raise self._fail(e, "head bucket", self.bucket) from e
        except Exception as e:
            raise self._fail(e, "head bucket", self.bucket) from e
        self._bucket_seen = True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][len(self.prefix) :],
                        int(obj["Size"]),
                        obj["LastModified"].timestamp(),
                        str(obj.get("ETag", "")).strip('"'),
                    )
        except Exception as e:
            raise self._fail(e, "list", prefix or "/") from e

    def delete(self, key: str) -> None:
        s3_key = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=s3_key)
        except Exception as e:
            err = self._fail(e, "delete", key)
            if not isinstance(err, ObjectNotFound):
                raise err from e

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (used by `repo init`)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError:
            pass
        except Exception as e:
            raise self._fail(e, "head bucket", self.bucket) from e
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail(e, "create bucket", self.bucket) from e
        except Exception as e:
            raise self._fail(e, "create bucket", self.bucket) from e

    def enable_object_lock(self) -> None:
        """Make sure the bucket exists with Object Lock enabled (created so if missing)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            exists = True
        except botocore.exceptions.ClientError:
            exists = False
        except Exception as e:
            raise self._fail(e, "head bucket", self.bucket) from e
        try:
            if not exists:
                self.client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("ObjectLockConfigurationNotFoundError", "InvalidBucketState"):
                raise StorageError(
                    f"bucket {self.bucket!r} exists without Object Lock; it can only be enabled on a new bucket"
                ) from None
            if code in ("NotImplemented", "InvalidRequest", "MethodNotAllowed", "501"):
                raise StorageError(
                    f"the S3 server at {self._endpoint()} does not support Object Lock"
                ) from None
            raise self._fail(e, "enable Object Lock on", self.bucket) from e
        except Exception as e:
            raise self._fail(e, "enable Object Lock on", self.bucket) from e
        if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise StorageError(
                f"bucket {self.bucket!r} exists without Object Lock; it can only be enabled on a new bucket"
            )

    def close(self) -> None:
        self.client.close()
