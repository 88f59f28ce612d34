"""
Key files: the platform's key pair and storage key, a PKI card's key (the simulator's), the card
issuer's master keys (the core module's). The keys themselves are L{lnt.crypto.ec} and
L{lnt.crypto.sealing}; this module reads and writes the files.

Key files are JSON, created with mode 0600 and never rewritten in place. Their content never
reaches a log or an error message: errors name the file, not what is in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from Crypto.Random import get_random_bytes

from lnt.crypto import pboc
from lnt.crypto.ec import PrivateKey, generate, private_from_pem, private_pem, public_raw, sign
from lnt.crypto.sealing import Sealer
from lnt.jsonfile import write_json_atomically

PLATFORM_KEY_FORMAT = "lnt-platform-key/1"
CARD_KEY_FORMAT = "lnt-pki-card-key/1"


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not a key file of the expected kind."""


def write_key_file(path: Path, content: dict[str, object]) -> None:
    write_json_atomically(path, content, 0o600)


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

    signing_key: PrivateKey
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
                private_from_pem(content["private_key"]), bytes.fromhex(content["storage_key"])
            )
        except (KeyError, ValueError):
            raise KeyFileError(f"key file {path} is damaged") from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[PlatformKeys, bool]:
        """The keys in C{path}, creating the file first if it does not exist."""
        if path.exists():
            return cls.load(path), False
        keys = cls(generate(), get_random_bytes(32))
        write_key_file(
            path,
            {
                "format": PLATFORM_KEY_FORMAT,
                "private_key": private_pem(keys.signing_key),
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
    key: PrivateKey
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
                "private_key": private_pem(self.key),
            },
        )

    @classmethod
    def load(cls, path: Path) -> CardKeyFile:
        content = read_key_file(path, CARD_KEY_FORMAT)
        try:
            return cls(
                int(content["pki_no"]),
                private_from_pem(content["private_key"]),
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
        return cls(pki_no, generate(), key_version, user_id, platform_public_key)


CORE_KEY_FORMAT = "lnt-core-keys/1"


@dataclass(frozen=True)
class CoreKeys:
    master_load_key: bytes
    master_tac_key: bytes
    m1_master_key: bytes

    @classmethod
    def load(cls, path: Path) -> CoreKeys:
        content = read_key_file(path, CORE_KEY_FORMAT)
        try:
            keys = cls(*(bytes.fromhex(content[k]) for k in
                         ("master_load_key", "master_tac_key", "m1_master_key")))
        except (KeyError, ValueError):
            raise KeyFileError(f"key file {path} is damaged") from None
        if any(len(k) != 16 for k in (keys.master_load_key, keys.master_tac_key,
                                      keys.m1_master_key)):
            raise KeyFileError(f"key file {path} is damaged")
        return keys

    @classmethod
    def load_or_create(cls, path: Path) -> CoreKeys:
        if path.exists():
            return cls.load(path)
        keys = cls(get_random_bytes(16), get_random_bytes(16), get_random_bytes(16))
        write_key_file(path, {"format": CORE_KEY_FORMAT,
                          "master_load_key": keys.master_load_key.hex(),
                          "master_tac_key": keys.master_tac_key.hex(),
                          "m1_master_key": keys.m1_master_key.hex()})
        return keys

    def m1_sector_key(self, physical_no: bytes, sector: int) -> bytes:
        """An M1 sector key: 3DES(M1 master, physical number with its last byte XOR sector)."""
        block = physical_no[:7] + bytes((physical_no[7] ^ sector,))
        return pboc.tdes(self.m1_master_key, block)[:6]
