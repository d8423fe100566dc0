"""The repository's config object and its keys: creating one, reading and checking one."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from ...errors import (
    CorruptObject,
    PasswordRequired,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
)
from .. import format as fmt
from ..crypto import Keys, new_keys, unwrap_keys, wrap_keys
from ..fingerprints import DEFAULT_FINGERPRINT_BLOCK, MIN_FINGERPRINT_BLOCK
from ..storage import ObjectNotFound, Storage
from ..storage.wrappers import RetryingStorage

CONFIG_KEY = "config"
DEFAULT_GRID = 4 * 1024 * 1024
MIN_GRID = 64 * 1024
MAX_GRID = 64 * 1024 * 1024
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
DEFAULT_ZSTD_LEVEL = 3


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def config_problem(config: dict[str, Any]) -> str | None:
    """What makes a config unusable, or None. It comes from the repository: check every field."""
    if not isinstance(config.get("id"), str):
        return "it has no repository id"
    grid = config.get("grid_size")
    if type(grid) is not int or not MIN_GRID <= grid <= MAX_GRID or grid & (grid - 1):
        return "the grid size is not a power of two between 64 KiB and 64 MiB"
    pack = config.get("pack_size", DEFAULT_PACK_SIZE)
    if type(pack) is not int or pack <= 0:
        return "the pack size is not a positive integer"
    compression = config.get("compression", {})
    if not isinstance(compression, dict) or type(compression.get("level", 0)) is not int:
        return "the compression section holds no zstd level"
    return None


def create_config(
    storage: Storage,
    *,
    grid_size: int = DEFAULT_GRID,
    password: bytes | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    pack_size: int = DEFAULT_PACK_SIZE,
    object_lock_days: int = 0,
    fingerprint_block: int = DEFAULT_FINGERPRINT_BLOCK,
) -> tuple[dict[str, Any], Keys | None]:
    """Check the settings, write a new repository's config (put-if-absent) and return it
    with the new keys (None when unencrypted)."""
    if fingerprint_block and (
        fingerprint_block < MIN_FINGERPRINT_BLOCK
        or fingerprint_block > grid_size
        or fingerprint_block & (fingerprint_block - 1)
    ):
        raise UsageError(
            f"fingerprint block must be 0 (none) or a power of two between "
            f"{MIN_FINGERPRINT_BLOCK // 1024} KiB and the grid size, not {fingerprint_block}"
        )
    if grid_size < MIN_GRID or grid_size > MAX_GRID or grid_size & (grid_size - 1):
        raise UsageError(
            f"grid size must be a power of two between {MIN_GRID // 1024} KiB and "
            f"{MAX_GRID // 1024 // 1024} MiB, not {grid_size}"
        )
    if not 1 <= zstd_level <= 19:
        raise UsageError("zstd level must be between 1 and 19")
    if object_lock_days:
        enable = getattr(storage, "enable_object_lock", None)
        if enable is None:
            raise UsageError("Object Lock needs an S3 repository (s3://bucket/prefix)")
        if object_lock_days < 1:
            raise UsageError("the Object Lock retention must be at least 1 day")
        enable()
    if storage.head(CONFIG_KEY) is not None:
        raise RepositoryExists(f"a repository already exists at {storage.url}")
    repo_id = secrets.token_hex(16)
    config: dict[str, Any] = {
        "format": "lamina-repository",
        "version": fmt.FORMAT_VERSION,
        "id": repo_id,
        "created": utc_now(),
        "grid_size": grid_size,
        "pack_size": pack_size,
        "hash": "blake3-keyed" if password else "blake3",
        "compression": {"codec": "zstd", "level": zstd_level},
        "fingerprint_block": fingerprint_block or None,
        "encryption": None,
        "object_lock": {"mode": "COMPLIANCE", "days": object_lock_days}
        if object_lock_days
        else None,
    }
    keys = None
    if password is not None:
        if not password:
            raise UsageError("the password is empty")
        keys = new_keys()
        config["encryption"] = wrap_keys(keys, password, repo_id)
    blob = json.dumps(config, indent=2).encode() + b"\n"
    # Through the retrying wrapper: a retry that meets our own config is success.
    if not RetryingStorage(storage).put(CONFIG_KEY, blob, if_absent=True):
        raise RepositoryExists(f"a repository already exists at {storage.url}")
    return config, keys


def read_config(
    storage: Storage, *, password: bytes | None = None
) -> tuple[dict[str, Any], Keys | None]:
    """Read and check a repository's config, and unwrap its keys with ``password``."""
    try:
        blob = storage.get(CONFIG_KEY)
    except ObjectNotFound:
        raise RepositoryNotFound(
            f"no lamina repository at {storage.url} (run 'lamina repo init')"
        ) from None
    try:
        config = json.loads(blob)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, huge integers, deep nesting
        raise CorruptObject(f"the repository config at {storage.url} is not valid JSON") from None
    if not isinstance(config, dict) or config.get("format") != "lamina-repository":
        raise CorruptObject(f"{storage.url} does not hold a lamina repository config")
    if config.get("version") != fmt.FORMAT_VERSION:
        from ...limits import shown  # here: limits sits above the engine

        version = shown(str(config.get("version")))
        raise UnsupportedFormat(
            f"repository format version {version} is not supported by this lamina "
            f"(it reads version {fmt.FORMAT_VERSION}); upgrade lamina"
        )
    problem = config_problem(config)
    if problem is not None:
        raise CorruptObject(f"the repository config at {storage.url} is damaged: {problem}")
    keys = None
    if config.get("encryption"):
        if password is None:
            raise PasswordRequired(
                "this repository is encrypted: give --password-file or set LAMINA_PASSWORD_FILE"
            )
        keys = unwrap_keys(config["encryption"], password, config["id"])
    return config, keys
