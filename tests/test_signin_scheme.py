"""
Test vectors of the sign-in scheme (docs/protocol.rst, "Sign-in test vectors"): fixed keys and
randoms -> exact bytes. The signatures are deterministic (RFC 6979). ECDH, ECDSA and HKDF are
cross-checked with an independent implementation (the C{cryptography} package).
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lnt.crypto.ec import key_from_scalar, public_raw, sign
from lnt.messages.login import (
    LABEL_2,
    LABEL_3,
    LABEL_CONFIRM,
    LABEL_KEYS,
    InitAnswer,
    Login1Answer,
    Login2Answer,
    Login2Command,
    derive_keys,
    login1_signed,
    login3_signed,
    shared_secret,
    transcript,
)
from lnt.messages.statuswords import SW_OK

CARD_D = int("11" * 32, 16)
PLATFORM_D = int("22" * 32, 16)
EC_D = int("33" * 32, 16)
EP_D = int("44" * 32, 16)
PKI, USER, KVER = 70000472, b"DEMO-TERMINAL-01", 1
RC = bytes.fromhex("0102030405060708")
SERIAL = bytes.fromhex("0000000000000001")
COUNTER = 1

V = {
    "card_pub": "0217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed"
                "194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f2897c65306e5794",
    "EC": "51a7580833898ea1b183cbd7350a4099078c6ef1c1e18e970cd7683035f25e7d"
          "0110522712b0b5a7cff081685486984a94e6831edac46e7360fa9d834a7a81a1",
    "EP": "5b36890dacbd7c9a96bb74a1ee28b3d2d75b72e09a20ef25cf8e6fd8a9f0350d"
          "0e14bed8d4682a34d83538bdff5b96e89a6666ec0db5745d02fa1210072df75a",
    "dd03": "042c1f5853494d312e3000019000",
    "sig1": "0d506caa59b41e1da8bf7e8d67cfaf311ee7722c797185cd19098c58e58c94fe"
            "bf0321f7028aa1a3d03c5580d34e0abc3140d805cc9cd5b8311e90db7aac2aff",
    "sig2": "1cd0839ef0a13984e0870261eeaec5493856a3c2b1c1dd24573e4db1cccc066b"
            "931163cceeeb805c00cb3a65af8b65a9be0f6adadc191910e61a0f7ecf1034ee",
    "Z": "5238f9f956812e75918895390fa057a2063aa66d4d5eefbe6ecdcf78342d2922",
    "session_key": "914d7fe0279a6f7adf7ff7f660569033",
    "confirm_key": "4ebdb8c3aa83943d3b3e242f5940a3e3561b1340b39693a6e6e4697ee0da844a",
    "confirm": "4f0f59f59b13f2c251e7007ad347b0e9",
    "sig3": "ca6de017c8e070615a5bcd80addc6c5f987525fe63ba78923eb75475bd149593"
            "523467b046135965229d3bf7ef888584f1c5207bcc147a9e88ac9bc13d9bf5a2",
}


def _independent_public(d: int) -> bytes:
    pub = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    return pub.x.to_bytes(32, "big") + pub.y.to_bytes(32, "big")


def _independent_verify(public: bytes, data: bytes, sig: bytes) -> None:
    key = ec.EllipticCurvePublicNumbers(int.from_bytes(public[:32], "big"),
                                        int.from_bytes(public[32:], "big"),
                                        ec.SECP256R1()).public_key()
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))  # raises if wrong


def test_public_keys() -> None:
    assert public_raw(key_from_scalar(CARD_D)).hex() == V["card_pub"]
    assert _independent_public(CARD_D).hex() == V["card_pub"]
    assert _independent_public(EC_D).hex() == V["EC"]
    assert _independent_public(EP_D).hex() == V["EP"]


def test_dd03_r_init_answer() -> None:
    assert InitAnswer(PKI, b"SIM1.0", KVER, SW_OK).encode().hex() == V["dd03"]
    assert InitAnswer.decode(bytes.fromhex(V["dd03"])) == InitAnswer(PKI, b"SIM1.0", KVER, SW_OK)


def test_dd05_login1() -> None:
    ec_pub = bytes.fromhex(V["EC"])
    signed = login1_signed(PKI, USER, KVER, RC, ec_pub)
    assert signed == b"LNT-SIGNIN-1" + bytes.fromhex("042c1f58") + USER + b"\x00\x01" + RC + ec_pub
    sig1 = sign(key_from_scalar(CARD_D), signed)
    assert sig1.hex() == V["sig1"]
    _independent_verify(bytes.fromhex(V["card_pub"]), signed, sig1)
    info = Login1Answer(RC, sig1, ec_pub, SW_OK).encode()
    assert len(info) == 138 and info[:8] == RC and info[-2:] == SW_OK


def test_dd06_login2_and_keys() -> None:
    ec_pub, ep_pub = bytes.fromhex(V["EC"]), bytes.fromhex(V["EP"])
    t = transcript(PKI, USER, KVER, RC, ec_pub, SERIAL, ep_pub)
    assert len(t) == 4 + 16 + 2 + 8 + 64 + 8 + 64
    sig2 = sign(key_from_scalar(PLATFORM_D), LABEL_2 + t)
    assert sig2.hex() == V["sig2"]
    _independent_verify(_independent_public(PLATFORM_D), LABEL_2 + t, sig2)
    dd06 = Login2Command(SERIAL, sig2, ep_pub).encode()
    assert len(dd06) == 141 and dd06[:5].hex() == "bbc9000088"

    z = shared_secret(key_from_scalar(EP_D), ec_pub)
    assert z == shared_secret(key_from_scalar(EC_D), ep_pub)
    independent_z = ec.derive_private_key(EP_D, ec.SECP256R1()).exchange(
        ec.ECDH(), ec.derive_private_key(EC_D, ec.SECP256R1()).public_key())
    assert z == independent_z and z.hex() == V["Z"]

    keys = derive_keys(z, RC, SERIAL, t)
    okm = HKDF(hashes.SHA256(), 48, RC + SERIAL,
               LABEL_KEYS + hashlib.sha256(t).digest()).derive(z)
    assert keys.session_key == okm[:16] and keys.confirm_key == okm[16:]
    assert keys.session_key.hex() == V["session_key"]
    assert keys.confirm_key.hex() == V["confirm_key"]
    confirm = keys.confirm(t, COUNTER)
    expected = hmac.new(okm[16:], LABEL_CONFIRM + t + COUNTER.to_bytes(8, "big"),
                        hashlib.sha256).digest()[:16]
    assert confirm == expected and confirm.hex() == V["confirm"]


def test_dd07_login2_answer() -> None:
    ec_pub, ep_pub = bytes.fromhex(V["EC"]), bytes.fromhex(V["EP"])
    t = transcript(PKI, USER, KVER, RC, ec_pub, SERIAL, ep_pub)
    answer = Login2Answer(PKI, USER, SERIAL, KVER, bytes.fromhex(V["confirm"]), COUNTER,
                          bytes(64), bytes.fromhex(V["card_pub"]), SW_OK)
    assert len(answer.block) == 46
    signed = login3_signed(t, answer.block, COUNTER)
    assert signed.startswith(LABEL_3)
    sig3 = sign(key_from_scalar(CARD_D), signed)
    assert sig3.hex() == V["sig3"]
    _independent_verify(bytes.fromhex(V["card_pub"]), signed, sig3)
    encoded = Login2Answer(**{**answer.__dict__, "signature": sig3}).encode()
    assert len(encoded) == 184
    assert Login2Answer.decode(encoded).signature == sig3
    assert Login2Answer.decode(encoded).counter == COUNTER


def test_key_files_of_the_release_before_still_load() -> None:
    """Keys were pycryptodome's PEM before the switch to OpenSSL: the same key, still usable."""
    from Crypto.PublicKey import ECC

    from lnt.crypto.ec import private_from_pem, public_raw, sign, verify

    old = ECC.generate(curve="P-256")
    key = private_from_pem(old.export_key(format="PEM"))
    raw = bytes(old.public_key().export_key(format="raw"))[1:]
    assert public_raw(key) == raw
    assert verify(raw, b"data", sign(key, b"data"))
    with pytest.raises(ValueError):
        private_from_pem(ECC.generate(curve="P-384").export_key(format="PEM"))
