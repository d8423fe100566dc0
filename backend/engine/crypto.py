"""Keys, sealing and piece identities.

An encrypted repository has one random master key of 64 bytes: 32 for AES-256-GCM, 32 to key
the piece-identity hash (so that identities reveal nothing of the plaintext to anyone without
the key). The master key is stored wrapped by a key derived from the password with scrypt.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blake3

from ..errors import CorruptObject, UnsupportedFormat, WrongPassword

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# cryptography (and scrypt in hashlib) are imported when a repository is encrypted: most
# commands on plain repositories never need them, and they cost a good part of start-up.

NONCE_SIZE = 12
TAG_SIZE = 16
ID_SIZE = 32

# scrypt with N=2^15, r=8 costs about 32 MiB and 0.1 s: a fair price per repository open.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text.encode(), validate=True)


@dataclass(frozen=True)
class Keys:
    """What a repository needs to read and write: None for an unencrypted one."""

    data_key: bytes
    id_key: bytes


def new_keys() -> Keys:
    return Keys(os.urandom(32), os.urandom(32))


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    import hashlib

    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def wrap_keys(keys: Keys, password: bytes, repo_id: str) -> dict[str, Any]:
    """The `encryption` section of a repository config."""
    salt = os.urandom(16)
    kek = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE_SIZE)
    wrapped = _aesgcm(kek).encrypt(nonce, keys.data_key + keys.id_key, repo_id.encode())
    return {
        "cipher": "aes-256-gcm",
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "wrapped_key": _b64(nonce + wrapped),
    }


def unwrap_keys(section: Any, password: bytes, repo_id: str) -> Keys:
    """The keys from a config's `encryption` section, which comes from the repository."""
    kdf = section.get("kdf") if isinstance(section, dict) else None
    if (
        not isinstance(kdf, dict)
        or section.get("cipher") != "aes-256-gcm"
        or kdf.get("name") != "scrypt"
    ):
        from ..limits import shown  # here: limits sits above the engine, which imports this

        cipher = section.get("cipher") if isinstance(section, dict) else section
        raise UnsupportedFormat(
            f"unsupported encryption in repository config: {shown(str(cipher))}"
        )
    damaged = "the encryption section of the repository config is damaged"
    try:
        salt = _unb64(kdf["salt"])
        n, r, p = (int(kdf[name]) for name in ("n", "r", "p"))
        blob = _unb64(section["wrapped_key"])
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        raise CorruptObject(damaged) from None
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise CorruptObject(f"{damaged}: the wrapped key is truncated")
    try:
        kek = _derive(password, salt, n, r, p)
    except (ValueError, OverflowError, MemoryError):
        raise CorruptObject(f"{damaged}: invalid scrypt parameters") from None
    from cryptography.exceptions import InvalidTag

    try:
        plain = _aesgcm(kek).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], repo_id.encode())
    except InvalidTag:
        raise WrongPassword("wrong password for this repository") from None
    return Keys(plain[:32], plain[32:64])


class Sealer:
    """Seals and opens bytes. Without keys it is the identity, and identities are plain blake3."""

    def __init__(self, keys: Keys | None) -> None:
        self.keys = keys
        self._aead = _aesgcm(keys.data_key) if keys else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def overhead(self) -> int:
        return NONCE_SIZE + TAG_SIZE if self._aead else 0

    def seal(self, data: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes, what: str) -> bytes:
        if self._aead is None:
            return blob
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CorruptObject(f"{what} is truncated")
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise CorruptObject(
                f"{what} fails its authentication check (corrupt or tampered)"
            ) from None

    def piece_id(self, data: bytes | memoryview) -> bytes:
        if self.keys is None:
            return blake3.blake3(data, max_threads=1).digest()
        return blake3.blake3(data, key=self.keys.id_key, max_threads=1).digest()


def checksum(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()[:16]
