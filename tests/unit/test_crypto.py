"""Key wrapping, sealing and piece identities."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.backend.engine.crypto import (
    NONCE_SIZE,
    TAG_SIZE,
    Keys,
    Sealer,
    new_keys,
    unwrap_keys,
    wrap_keys,
)
from lamina.backend.errors import CorruptObject, UnsupportedFormat, WrongPassword

Wrapped = tuple[Keys, dict[str, Any]]
REPO_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def wrapped() -> Wrapped:
    keys = new_keys()
    return keys, wrap_keys(keys, b"correct horse", REPO_ID)


def test_new_keys_are_random_and_distinct() -> None:
    a, b = new_keys(), new_keys()
    assert len(a.data_key) == len(a.id_key) == 32
    assert a.data_key != a.id_key
    assert a != b


def test_wrapped_keys_round_trip(wrapped: Wrapped) -> None:
    keys, section = wrapped
    assert unwrap_keys(section, b"correct horse", REPO_ID) == keys
    # the section is what the config stores: JSON, and it holds no key in the clear
    text = json.dumps(section)
    for key in (keys.data_key, keys.id_key):
        assert base64.b64encode(key).decode() not in text
        assert key.hex() not in text


def test_wrapping_twice_uses_fresh_salt_and_nonce(wrapped: Wrapped) -> None:
    keys, section = wrapped
    again = wrap_keys(keys, b"correct horse", REPO_ID)
    assert again["wrapped_key"] != section["wrapped_key"]
    assert again["kdf"]["salt"] != section["kdf"]["salt"]
    assert unwrap_keys(again, b"correct horse", REPO_ID) == keys


@pytest.mark.parametrize("password", [b"correct horse ", b"Correct horse", b"", b"x" * 1000])
def test_wrong_password_is_refused(wrapped: Wrapped, password: bytes) -> None:
    with pytest.raises(WrongPassword, match="wrong password"):
        unwrap_keys(wrapped[1], password, REPO_ID)


def test_keys_are_bound_to_the_repository_id(wrapped: Wrapped) -> None:
    """A config section copied into another repository does not open there."""
    with pytest.raises(WrongPassword):
        unwrap_keys(wrapped[1], b"correct horse", "f" * 32)


def test_tampered_wrapped_key_is_refused(wrapped: Wrapped) -> None:
    section = copy.deepcopy(wrapped[1])
    blob = bytearray(base64.b64decode(str(section["wrapped_key"])))
    blob[-1] ^= 1
    section["wrapped_key"] = base64.b64encode(bytes(blob)).decode()
    with pytest.raises(WrongPassword):
        unwrap_keys(section, b"correct horse", REPO_ID)


@pytest.mark.parametrize(
    ("field", "value"), [("cipher", "chacha20"), ("kdf", {"name": "argon2id"})]
)
def test_unknown_cipher_or_kdf_is_unsupported(wrapped: Wrapped, field: str, value: object) -> None:
    section = copy.deepcopy(wrapped[1])
    section[field] = value
    with pytest.raises(UnsupportedFormat, match="unsupported encryption"):
        unwrap_keys(section, b"correct horse", REPO_ID)


# ----------------------------------------------------------------------------- sealing

KEYS = Keys(bytes(range(32)), bytes(range(32, 64)))


def test_seal_round_trip_with_fresh_nonces() -> None:
    sealer = Sealer(KEYS)
    assert sealer.encrypted and sealer.overhead == NONCE_SIZE + TAG_SIZE
    first, second = sealer.seal(b"data", b"aad"), sealer.seal(b"data", b"aad")
    assert first != second  # a fresh nonce each time
    assert len(first) == 4 + sealer.overhead
    assert sealer.open(first, b"aad", "x") == sealer.open(second, b"aad", "x") == b"data"


def test_every_tampered_byte_is_detected() -> None:
    sealer = Sealer(KEYS)
    blob = sealer.seal(b"sixteen bytes!!!", b"aad")
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = blob[:i] + bytes([blob[i] ^ bit]) + blob[i + 1 :]
            with pytest.raises(CorruptObject, match="fails its authentication check"):
                sealer.open(tampered, b"aad", "pack x")


def test_wrong_aad_or_key_is_detected() -> None:
    blob = Sealer(KEYS).seal(b"data", b"piece:a")
    with pytest.raises(CorruptObject, match="authentication"):
        Sealer(KEYS).open(blob, b"piece:b", "piece b")
    with pytest.raises(CorruptObject, match="authentication"):
        Sealer(Keys(bytes(32), KEYS.id_key)).open(blob, b"piece:a", "piece a")


@pytest.mark.parametrize("length", [0, 1, NONCE_SIZE, NONCE_SIZE + TAG_SIZE - 1])
def test_truncated_sealed_blob_is_corrupt(length: int) -> None:
    blob = Sealer(KEYS).seal(b"data", b"aad")[:length]
    with pytest.raises(CorruptObject, match="truncated"):
        Sealer(KEYS).open(blob, b"aad", "x")


def test_unkeyed_sealer_is_the_identity() -> None:
    sealer = Sealer(None)
    assert not sealer.encrypted and sealer.overhead == 0
    assert sealer.seal(b"data", b"aad") == b"data"
    assert sealer.open(b"data", b"other aad", "x") == b"data"


@settings(max_examples=50)
@given(data=st.binary(max_size=4096), aad=st.binary(max_size=64))
def test_seal_round_trips_any_bytes(data: bytes, aad: bytes) -> None:
    sealer = Sealer(KEYS)
    assert sealer.open(sealer.seal(data, aad), aad, "x") == data


# ----------------------------------------------------------------------------- piece ids


def test_unkeyed_piece_id_is_plain_blake3() -> None:
    assert Sealer(None).piece_id(b"hello") == blake3.blake3(b"hello").digest()


def test_keyed_piece_id_depends_on_the_key_only() -> None:
    keyed = Sealer(KEYS).piece_id(b"hello")
    assert keyed == blake3.blake3(b"hello", key=KEYS.id_key).digest()
    assert keyed != Sealer(None).piece_id(b"hello")
    # another id key gives another identity; the data key plays no part
    assert keyed != Sealer(Keys(KEYS.data_key, bytes(32))).piece_id(b"hello")
    assert keyed == Sealer(Keys(bytes(32), KEYS.id_key)).piece_id(b"hello")


@settings(max_examples=50)
@given(data=st.binary(max_size=2048))
def test_piece_ids_are_stable_and_accept_memoryviews(data: bytes) -> None:
    for sealer in (Sealer(None), Sealer(KEYS)):
        piece_id = sealer.piece_id(data)
        assert len(piece_id) == 32
        assert sealer.piece_id(memoryview(bytearray(data))) == piece_id


# ----------------------------------------------------------------------------- hostile sections


def _damaged(section: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    damaged = copy.deepcopy(section)
    where = damaged
    for step in path[:-1]:
        where = where[step]
    if value is _MISSING:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return damaged


_MISSING = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("kdf", "salt"), _MISSING),
        (("kdf", "salt"), 17),
        (("kdf", "n"), "many"),
        (("kdf", "n"), 3),  # not a power of two
        (("kdf", "n"), 2**62),  # more memory than anyone has
        (("kdf", "r"), 0),
        (("kdf", "p"), None),
        (("wrapped_key",), _MISSING),
        (("wrapped_key",), "@@@not base64@@@"),
        (("wrapped_key",), "QUJD"),  # three bytes: shorter than a nonce
        (("wrapped_key",), ["a list"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_damaged_encryption_section_is_corrupt(
    wrapped: Wrapped, path: tuple[str, ...], value: object
) -> None:
    """The config comes from the repository: damage there is a clear error, not a crash."""
    with pytest.raises(CorruptObject, match="encryption section"):
        unwrap_keys(_damaged(wrapped[1], path, value), b"correct horse", REPO_ID)


@pytest.mark.parametrize("section", [[], "aes", {"cipher": "aes-256-gcm", "kdf": "scrypt"}])
def test_encryption_section_of_the_wrong_shape_is_unsupported(section: Any) -> None:
    with pytest.raises(UnsupportedFormat, match="unsupported encryption"):
        unwrap_keys(section, b"correct horse", REPO_ID)


def test_unsupported_cipher_name_is_shown_escaped() -> None:
    with pytest.raises(UnsupportedFormat) as refused:
        unwrap_keys({"cipher": "evil\x1b[2J", "kdf": {}}, b"pw", REPO_ID)
    assert str(refused.value) == "unsupported encryption in repository config: evil\\x1b[2J"
