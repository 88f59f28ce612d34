"""
EC keys and signatures, NIST P-256 (platform and PKI cards), on OpenSSL through the
C{cryptography} package: on this machine about 12x faster to sign and 4x faster to verify than
pycryptodome (docs/design.rst, "Process and operations"), which matters on the reactor thread.

On the wire a public key is 64 bytes (X || Y, big-endian) and a signature 64 bytes (r || s): both
fit the 128-byte slots of the sign-in stages together. Signatures are ECDSA over SHA-256 with
deterministic nonces (RFC 6979), so that the test vectors of docs/protocol.rst are reproducible;
verification accepts any valid signature. The rest of the code handles keys only through this
module (L{PrivateKey}, L{generate}, L{private_pem}, L{private_from_pem}).
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

CURVE = "P-256"
PUBLIC_KEY_SIZE = 64
SIGNATURE_SIZE = 64

PrivateKey = ec.EllipticCurvePrivateKey
_CURVE = ec.SECP256R1()
_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFY = ec.ECDSA(hashes.SHA256())


def generate() -> PrivateKey:
    return ec.generate_private_key(_CURVE)


def key_from_scalar(d: int) -> PrivateKey:
    """A private key with a given scalar (test vectors only)."""
    return ec.derive_private_key(d, _CURVE)


def public_raw(key: PrivateKey) -> bytes:
    """64-byte X || Y of a key's public point."""
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)[1:]


def public_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey:
    """The inverse of L{public_raw}; L{ValueError} if it is not a point on the curve."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"public key must be {PUBLIC_KEY_SIZE} bytes")
    # OpenSSL checks that the point is on the curve (and refuses the point at infinity)
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, b"\x04" + raw)


@lru_cache(maxsize=4096)
def _known_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """L{public_from_raw}, kept: the keys signatures are verified with are the registered PKI
    cards' (a few per terminal), and parsing one (the point's on-curve check) cost a tenth of a
    verification. A key that does not parse raises and is not kept."""
    return public_from_raw(raw)


def sign(key: PrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, _SIGN))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """C{True} only for a valid signature by C{public_key}; never raises on bad input."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        _known_public_key(public_key).verify(encode_dss_signature(r, s), data, _VERIFY)
    except (ValueError, InvalidSignature):
        return False
    return True


def ecdh(private: PrivateKey, peer_public: bytes) -> bytes:
    """The ECDH shared secret: the x coordinate of private * peer, 32 bytes; L{ValueError} if
    the peer's key is not a point on the curve."""
    return private.exchange(ec.ECDH(), public_from_raw(peer_public))


def private_pem(key: PrivateKey) -> str:
    """PKCS#8 PEM, unencrypted (key files are protected by their mode, 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def private_from_pem(pem: str) -> PrivateKey:
    """A P-256 private key from PEM (PKCS#8 or SEC1, as older key files hold them)."""
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
        raise ValueError("not a P-256 private key")
    return key
