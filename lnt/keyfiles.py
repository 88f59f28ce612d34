"""
Key material: EC key pairs (platform and PKI cards), and the sealer that protects secrets
stored in the ledger.

All EC keys are NIST P-256. On the wire a public key is 64 bytes (X || Y, big-endian) and a
signature 64 bytes (r || s): both fit the 128-byte slots of the sign-in stages together.
Signatures are ECDSA over SHA-256 with deterministic nonces (RFC 6979), so that the test vectors
of docs/protocol.rst are reproducible; verification accepts any valid signature.

Key files are JSON, created with mode 0600 and never rewritten in place. Their content never
reaches a log or an error message: errors name the file, not what is in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Random import get_random_bytes
from Crypto.Signature import DSS

CURVE = "P-256"
PUBLIC_KEY_SIZE = 64
SIGNATURE_SIZE = 64
PLATFORM_KEY_FORMAT = "lnt-platform-key/1"
CARD_KEY_FORMAT = "lnt-pki-card-key/1"


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not a key file of the expected kind."""


def public_raw(key: ECC.EccKey) -> bytes:
    """64-byte X || Y of a key's public point."""
    return bytes(key.public_key().export_key(format="raw"))[1:]


def public_from_raw(raw: bytes) -> ECC.EccKey:
    """The inverse of L{public_raw}; L{ValueError} if it is not a point on the curve."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"public key must be {PUBLIC_KEY_SIZE} bytes")
    key = ECC.import_key(b"\x04" + raw, curve_name=CURVE)
    # pycryptodome reads (0, 0) as the point at infinity; it is no public key.
    if key.pointQ.is_point_at_infinity():
        raise ValueError("public key is the point at infinity")
    return key


def sign(key: ECC.EccKey, data: bytes) -> bytes:
    return bytes(DSS.new(key, "deterministic-rfc6979").sign(SHA256.new(data)))


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """C{True} only for a valid signature by C{public_key}; never raises on bad input."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        DSS.new(public_from_raw(public_key), "fips-186-3").verify(SHA256.new(data), signature)
    except ValueError:
        return False
    return True


def key_from_scalar(d: int) -> ECC.EccKey:
    """A private key with a given scalar (test vectors only)."""
    return ECC.construct(curve=CURVE, d=d)


class Sealer:
    """
    AES-256-GCM with a 32-byte key: C{seal} gives nonce (12) || ciphertext || tag (16), bound
    to an associated label so that a sealed value cannot be moved to another row.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("storage key must be 32 bytes")
        self._key = key

    def seal(self, plaintext: bytes, label: bytes) -> bytes:
        nonce = get_random_bytes(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(label)
        ct, tag = cipher.encrypt_and_digest(plaintext)
        return nonce + ct + tag

    def open(self, sealed: bytes, label: bytes) -> bytes:
        if len(sealed) < 28:
            raise ValueError("sealed value too short")
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=sealed[:12])
        cipher.update(label)
        return bytes(cipher.decrypt_and_verify(sealed[12:-16], sealed[-16:]))


def write_key_file(path: Path, content: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_key_file(path: Path, fmt: str) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    if mode & 0o077:
        raise KeyFileError(f"key file {path} is readable by others: chmod 600 it")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        raise KeyFileError(f"key file {path} cannot be read as JSON") from None
    if not isinstance(content, dict) or content.get("format") != fmt:
        raise KeyFileError(f"{path} is not a {fmt} key file")
    return content


@dataclass(frozen=True)
class PlatformKeys:
    """The platform's EC key pair and its 32-byte storage key."""

    signing_key: ECC.EccKey
    storage_key: bytes

    @property
    def public_key(self) -> bytes:
        return public_raw(self.signing_key)

    def sign(self, data: bytes) -> bytes:
        return sign(self.signing_key, data)

    def sealer(self) -> Sealer:
        return Sealer(self.storage_key)

    @classmethod
    def load(cls, path: Path) -> PlatformKeys:
        content = read_key_file(path, PLATFORM_KEY_FORMAT)
        try:
            return cls(
                ECC.import_key(content["private_key"]), bytes.fromhex(content["storage_key"])
            )
        except (KeyError, ValueError):
            raise KeyFileError(f"key file {path} is damaged") from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[PlatformKeys, bool]:
        """The keys in C{path}, creating the file first if it does not exist."""
        if path.exists():
            return cls.load(path), False
        keys = cls(ECC.generate(curve=CURVE), get_random_bytes(32))
        write_key_file(
            path,
            {
                "format": PLATFORM_KEY_FORMAT,
                "private_key": keys.signing_key.export_key(format="PEM"),
                "storage_key": keys.storage_key.hex(),
            },
        )
        return keys, True


@dataclass(frozen=True)
class CardKeyFile:
    """
    A PKI card as the simulator's reader holds it: its number, private key and key version,
    the user ID it is bound to, and the platform public key it trusts (personalised into the
    card when it is issued).
    """

    pki_no: int
    key: ECC.EccKey
    key_version: int
    user_id: bytes
    platform_public_key: bytes

    @property
    def public_key(self) -> bytes:
        return public_raw(self.key)

    def save(self, path: Path) -> None:
        write_key_file(
            path,
            {
                "format": CARD_KEY_FORMAT,
                "pki_no": self.pki_no,
                "key_version": self.key_version,
                "user_id": self.user_id.hex(),
                "platform_public_key": self.platform_public_key.hex(),
                "private_key": self.key.export_key(format="PEM"),
            },
        )

    @classmethod
    def load(cls, path: Path) -> CardKeyFile:
        content = read_key_file(path, CARD_KEY_FORMAT)
        try:
            return cls(
                int(content["pki_no"]),
                ECC.import_key(content["private_key"]),
                int(content["key_version"]),
                bytes.fromhex(content["user_id"]),
                bytes.fromhex(content["platform_public_key"]),
            )
        except (KeyError, ValueError):
            raise KeyFileError(f"key file {path} is damaged") from None

    @classmethod
    def generate(
        cls, pki_no: int, key_version: int, user_id: bytes, platform_public_key: bytes
    ) -> CardKeyFile:
        return cls(pki_no, ECC.generate(curve=CURVE), key_version, user_id, platform_public_key)
