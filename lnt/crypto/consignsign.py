"""
The consignment API's message rules (SPEC-NOTES section 4, the source document and its PHP
demo), shared by the platform and the test merchant client.

 - C{sign}: drop C{sign}/C{Sign} and empty values (and, by the documented rule, C{custom} --
   and C{message} in notifications), sort by parameter name (byte order), join as
   C{k1=v1&k2=v2...}, append C{&key=<merchant MD5 key>}, MD5 over UTF-8, hex. The PHP demo
   signs C{custom} too: the platform accepts a sign made by either rule, in either case, and
   signs what it sends by the documented rule.
 - C{cardNumber}/C{cardPassword}: AES-128-ECB with PKCS#5/7 padding under the merchant's AES key
   (its 16 characters as bytes), as lower-case hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad

#: fields that the documented rule leaves out of the sign
UNSIGNED = frozenset({"sign", "Sign", "custom", "message"})


class ConsignError(ValueError):
    """A field does not decrypt or a sign does not verify; the text is the C{msg}."""


def sign_string(params: Mapping[str, str], key: str, leave_out: frozenset[str] = UNSIGNED) -> str:
    items = sorted((k, v) for k, v in params.items() if k not in leave_out and v != "")
    return "&".join(f"{k}={v}" for k, v in items) + f"&key={key}"


def make_sign(params: Mapping[str, str], key: str, leave_out: frozenset[str] = UNSIGNED) -> str:
    return hashlib.md5(sign_string(params, key, leave_out).encode()).hexdigest()  # noqa: S324


def verify_sign(params: Mapping[str, str], key: str) -> bool:
    """The documented rule or the PHP demo's (which signs C{custom} too), any letter case."""
    given = params.get("sign", "").lower()
    if not given:
        return False
    documented = make_sign(params, key)
    demo = make_sign(params, key, frozenset({"sign", "Sign", "s"}))
    return hmac.compare_digest(given, documented) or hmac.compare_digest(given, demo)


def aes_key(text: str) -> bytes:
    key = text.encode()
    if len(key) != 16:
        raise ValueError("the AES key must be 16 bytes")
    return key


def encrypt_field(value: str, key: str) -> str:
    return bytes(AES.new(aes_key(key), AES.MODE_ECB).encrypt(pad(value.encode(), 16))).hex()


def decrypt_field(value: str, key: str, name: str) -> str:
    try:
        raw = bytes.fromhex(value)
        plain = unpad(AES.new(aes_key(key), AES.MODE_ECB).decrypt(raw), 16)
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise ConsignError(f"{name} does not decrypt with your AES key") from None
