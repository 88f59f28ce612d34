"""
EC keys and signatures, NIST P-256 (platform and PKI cards). On the wire a public key is 64 bytes
(X || Y, big-endian) and a signature 64 bytes (r || s): both fit the 128-byte slots of the
sign-in stages together. Signatures are ECDSA over SHA-256 with deterministic nonces (RFC 6979),
so that the test vectors of docs/protocol.rst are reproducible; verification accepts any valid
signature.
"""

from __future__ import annotations

from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS

CURVE = "P-256"
PUBLIC_KEY_SIZE = 64
SIGNATURE_SIZE = 64


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
