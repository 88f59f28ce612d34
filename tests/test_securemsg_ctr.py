"""
Secure messaging's AES-128-CTR, made from a kept AES block context (lnt.crypto.securemsg),
against OpenSSL's own CTR mode (the C{cryptography} package): the same bytes for any key,
direction, sequence number and length, including counters that carry across bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from lnt.crypto.securemsg import SMKeys


def openssl_ctr(key: bytes, direction: bytes, seq: int, data: bytes) -> bytes:
    counter = direction + seq.to_bytes(4, "big") + bytes(11)
    return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(data)


@given(key=st.binary(min_size=16, max_size=16), direction=st.sampled_from([b"C", b"A"]),
       seq=st.integers(0, 2**32 - 1), data=st.binary(max_size=8300))
def test_ctr_is_openssls(key: bytes, direction: bytes, seq: int, data: bytes) -> None:
    keys = SMKeys(key, bytes(16))
    assert keys._crypt(direction, seq, data) == openssl_ctr(key, direction, seq, data)
    # the kept block context has no state between messages
    assert keys._crypt(direction, seq, data[:7]) == openssl_ctr(key, direction, seq, data[:7])


def test_ctr_counter_carries_past_the_low_byte() -> None:
    """A message of more than 256 blocks: the counter's low byte wraps and carries."""
    key, data = bytes(range(16)), bytes(range(256)) * 20  # 320 blocks
    assert SMKeys(key, bytes(16))._crypt(b"A", 2**32 - 1, data) == openssl_ctr(
        key, b"A", 2**32 - 1, data)


def test_keys_compare_by_value() -> None:
    assert SMKeys(b"k" * 16, b"m" * 16) == SMKeys(b"k" * 16, b"m" * 16)
    assert hash(SMKeys(b"k" * 16, b"m" * 16)) == hash(SMKeys(b"k" * 16, b"m" * 16))
