"""
The order API's JSON envelope (source document 3.2.1, as recomputed in SPEC-NOTES section 3).

A message is a JSON object sent as compact UTF-8. Some of its fields travel in clear; the
others are put together as a compact JSON object, encrypted, and sent as the hex field C{data}:

 - key: the 16 raw bytes of MD5(str(timestamp)), two-key 3DES (K1 K2 K1);
 - cipher: 3DES-ECB over the JSON's UTF-8 bytes, zero-padded to 8 bytes, as hex (requests in
   upper case, responses in lower case, as the document's examples; either is accepted);
 - C{mac}: the last 8 hex digits, upper case, of MD5 over the compact JSON of the whole message
   without C{mac}, fields in the order they are sent.

This is obfuscation, not security: the key is derived from the timestamp that travels in clear.
What authenticates a request is the terminal's PKI signature (C{Sign}) and its live sign-in
session; nothing secret ever travels in an envelope.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from lnt.domain.inputs import (
    InputError,
    check_depth,
    check_text,
    may_hold_surrogates,
    timestamp_seconds,
)


class EnvelopeError(ValueError):
    """The message cannot be opened; the text says exactly what is wrong (for C{errmsg})."""


def envelope_key(timestamp: int) -> bytes:
    return hashlib.md5(str(timestamp).encode()).digest()  # noqa: S324 - the protocol's choice


def _cipher(timestamp: int) -> Cipher[modes.ECB]:
    key = envelope_key(timestamp)
    if key[:8] == key[8:]:
        # MD5 halves equal: 3DES degenerates to DES (pycryptodome, the first implementation
        # here, refused such keys; so do we)
        raise EnvelopeError(f"timestamp {timestamp} gives a degenerate 3DES key")
    # OpenSSL's 3DES (cryptography's "decrepit" module: the protocol's choice, not ours) is
    # three times faster than pycryptodome's, whose key set-up dominates two calls a request
    # (two-key 3DES written out as K1 K2 K1, as OpenSSL wants it)
    return Cipher(TripleDES(key + key[:8]), modes.ECB())  # noqa: S305 - the protocol's mode


def encrypt(timestamp: int, plaintext: bytes, upper: bool = True) -> str:
    padded = plaintext + b"\x00" * (-len(plaintext) % 8)
    hexed: str = _cipher(timestamp).encryptor().update(padded).hex()
    return hexed.upper() if upper else hexed


def decrypt(timestamp: int, data: str) -> bytes:
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise EnvelopeError("data is not hex") from None
    if not raw or len(raw) % 8:
        raise EnvelopeError("data is not a whole number of 3DES blocks")
    return _cipher(timestamp).decryptor().update(raw).rstrip(b"\x00")


def compact(fields: list[tuple[str, Any]] | dict[str, Any], ascii_only: bool = False) -> str:
    pairs = list(fields.items()) if isinstance(fields, dict) else fields
    text: str = json.dumps(dict(pairs), separators=(",", ":"), ensure_ascii=ascii_only)
    return text


def mac(fields: list[tuple[str, Any]] | dict[str, Any], ascii_only: bool = False) -> str:
    """The C{mac} of a message (its fields in the order sent, C{mac} left out)."""
    pairs = list(fields.items()) if isinstance(fields, dict) else fields
    text = compact([(k, v) for k, v in pairs if k != "mac"], ascii_only)
    return hashlib.md5(text.encode()).hexdigest().upper()[-8:]  # noqa: S324 - the protocol's


def seal(clear: dict[str, Any], secret: dict[str, Any], upper: bool = True) -> dict[str, Any]:
    """
    A complete message: C{clear} fields first (C{timestamp} among them), then C{data} holding
    C{secret} encrypted, then C{mac}.
    """
    message = dict(clear)
    if secret:
        message["data"] = encrypt(int(clear["timestamp"]), compact(secret).encode(), upper)
    message["mac"] = mac(message)
    return message


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dicts keep the order the fields were sent in, which the mac depends on
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def open_message(body: bytes) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """
    Parse and check a message: (its fields in order, the decrypted C{data} object or C{{}}).
    Raises L{EnvelopeError} with a precise message.
    """
    try:
        text = body.decode("utf-8")
        check_depth(text, "the body")
        fields = json.loads(text, object_pairs_hook=_unique)
        # a lone surrogate (JSON can escape one) cannot be encoded for the mac, nor stored
        if may_hold_surrogates(text):
            check_text(fields, "the body")
    except InputError as e:
        raise EnvelopeError(str(e)) from None
    except _Duplicate as e:
        raise EnvelopeError(f"field {e.args[0]!r} appears twice") from None
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("body is not a JSON object") from None
    if not isinstance(fields, dict):
        raise EnvelopeError("body is not a JSON object")
    pairs = list(fields.items())
    given = fields.get("mac")
    if not isinstance(given, str):
        raise EnvelopeError("mac is missing")
    # the mac over the text as sent with non-ASCII characters as they are, or (some clients)
    # escaped; the second form is computed only when the first does not match (each is the
    # whole message serialised again, and this runs for every order-API call)
    given = given.upper()
    if given != mac(pairs) and given != mac(pairs, ascii_only=True):
        raise EnvelopeError("mac does not match the message")
    timestamp = fields.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise EnvelopeError("timestamp is missing or not an integer")
    try:
        timestamp_seconds("timestamp", timestamp)
    except InputError as e:
        raise EnvelopeError(str(e)) from None
    data = fields.get("data")
    if data is None:
        return pairs, {}
    if not isinstance(data, str):
        raise EnvelopeError("data is not a string")
    plain = decrypt(timestamp, data)
    try:
        inner = plain.decode("utf-8")
        check_depth(inner, "data")
        secret = json.loads(inner)
        if may_hold_surrogates(inner):
            check_text(secret, "data")
    except InputError as e:
        raise EnvelopeError(str(e)) from None
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("data does not decrypt to JSON (wrong timestamp or key?)") from None
    if not isinstance(secret, dict):
        raise EnvelopeError("data does not decrypt to a JSON object")
    return pairs, secret
