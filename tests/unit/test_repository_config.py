"""Opening a repository whose config is hostile gives a clear error, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lamina.backend.engine.repository import CONFIG_KEY, Repository
from lamina.backend.engine.storage.memory import MemoryStorage
from lamina.backend.errors import CorruptObject, LaminaError, UnsupportedFormat


def _config_of(**changes: Any) -> dict[str, Any]:
    storage = MemoryStorage()
    Repository.init(storage, grid_size=64 * 1024)
    config: dict[str, Any] = json.loads(storage.get(CONFIG_KEY))
    config.update(changes)
    return config


def _open(blob: bytes) -> Repository:
    storage = MemoryStorage()
    storage.put(CONFIG_KEY, blob)
    return Repository.open(storage)


def test_a_sound_config_opens() -> None:
    repo = _open(json.dumps(_config_of()).encode())
    assert repo.grid_size == 64 * 1024


@pytest.mark.parametrize(
    "blob",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format": "lamina-repository", "version": 1' + b"0" * 5000 + b"}",
        b"\xff\xfe\x00",
        b"[]",
    ],
    ids=["deep", "huge-int", "bad-utf8", "list"],
)
def test_config_that_is_not_a_json_object_is_corrupt(blob: bytes) -> None:
    with pytest.raises(CorruptObject):
        _open(blob)


@pytest.mark.parametrize(
    "changes",
    [
        {"grid_size": "large"},
        {"grid_size": None},
        {"grid_size": 0},
        {"grid_size": 3 * 65536},
        {"pack_size": [1]},
        {"compression": "zstd"},
        {"compression": {"level": "max"}},
    ],
    ids=["grid-text", "grid-null", "grid-zero", "grid-not-power", "pack", "comp", "level"],
)
def test_config_with_damaged_fields_is_corrupt(changes: dict[str, Any]) -> None:
    with pytest.raises(CorruptObject, match="repository config"):
        _open(json.dumps(_config_of(**changes)).encode())


def test_config_without_a_grid_size_is_corrupt() -> None:
    config = _config_of()
    del config["grid_size"]
    with pytest.raises(CorruptObject, match="repository config"):
        _open(json.dumps(config).encode())


def test_encrypted_config_with_a_damaged_section_is_a_lamina_error() -> None:
    config = _config_of(encryption={"cipher": "aes-256-gcm", "kdf": {"name": "scrypt"}})
    with pytest.raises(CorruptObject, match="encryption section"):
        Repository.open(_storage_with(config), password=b"pw")
    config["encryption"] = "plain"
    with pytest.raises(UnsupportedFormat):
        Repository.open(_storage_with(config), password=b"pw")


def test_encrypted_config_without_an_id_is_corrupt() -> None:
    storage = MemoryStorage()
    Repository.init(storage, grid_size=64 * 1024, password=b"pw")
    config = json.loads(storage.get(CONFIG_KEY))
    del config["id"]
    with pytest.raises(LaminaError, match="repository config"):
        Repository.open(_storage_with(config), password=b"pw")


def _storage_with(config: dict[str, Any]) -> MemoryStorage:
    storage = MemoryStorage()
    storage.put(CONFIG_KEY, json.dumps(config).encode())
    return storage


def test_unknown_version_is_unsupported_and_shown_escaped() -> None:
    with pytest.raises(UnsupportedFormat) as refused:
        _open(json.dumps(_config_of(version="9\x1b[2J")).encode())
    assert str(refused.value) == (
        "repository format version 9\\x1b[2J is not supported by this lamina "
        "(it reads version 1); upgrade lamina"
    )
