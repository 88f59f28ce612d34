"""
L{lnt.crypto.ec.verify} keeps the public keys it has parsed: its answers must stay exactly those
of verifying with a freshly parsed key (checked here with C{cryptography} directly), for keys
seen before or not, and a key that is no point on the curve must keep failing (a failure to
parse is not kept).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec as cec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from lnt.crypto import ec

KEYS = [cec.derive_private_key(d, cec.SECP256R1()) for d in (3, 5, 7, 11)]


def raw(key: cec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_numbers().x.to_bytes(32, "big") + \
        key.public_key().public_numbers().y.to_bytes(32, "big")


def reference(public: bytes, data: bytes, signature: bytes) -> bool:
    """Verification with a key parsed for this call alone."""
    try:
        key = cec.EllipticCurvePublicKey.from_encoded_point(cec.SECP256R1(), b"\x04" + public)
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        key.verify(encode_dss_signature(r, s), data, cec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return len(signature) == 64


@settings(max_examples=150, deadline=None)
@given(signer=st.sampled_from(range(len(KEYS))), checker=st.sampled_from(range(len(KEYS))),
       data=st.binary(max_size=64), tamper=st.sampled_from(["none", "data", "signature", "key"]))
def test_verify_agrees_with_a_fresh_key(signer: int, checker: int, data: bytes,
                                        tamper: str) -> None:
    signature = ec.sign(KEYS[signer], data)
    public = raw(KEYS[checker])
    if tamper == "data":
        data += b"!"
    elif tamper == "signature":
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    elif tamper == "key":
        public = public[:-1] + bytes([public[-1] ^ 1])  # off the curve
    expected = reference(public, data, signature)
    assert ec.verify(public, data, signature) is expected
    assert ec.verify(public, data, signature) is expected  # the second time, from the cache
    if tamper == "none":
        assert expected is (signer == checker)


def test_a_key_off_the_curve_is_never_kept() -> None:
    off = raw(KEYS[0])[:-1] + bytes([raw(KEYS[0])[-1] ^ 1])
    signature = ec.sign(KEYS[0], b"x")
    for _ in range(3):
        assert ec.verify(off, b"x", signature) is False
    assert ec.verify(raw(KEYS[0]), b"x", signature) is True
