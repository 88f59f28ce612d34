"""
Independent test vectors for the card cryptography (docs/vectors.rst).

The platform (L{lnt.crypto.pboc}, L{lnt.crypto.securemsg}) and the simulator's virtual card and
reader compute with the same code, so a mistake in that code is shared by both sides and every end-
to-end test still passes. This module holds a SECOND implementation of the same computations,
written from docs/protocol.rst ("CPU purse load computation", "Secure messaging") with the
C{cryptography} package and the standard library only: it imports neither L{lnt.crypto.pboc} nor
L{lnt.crypto.securemsg} nor pycryptodome (C{Crypto.*}). The hex literals below were computed ONCE
by this second implementation, never by the code under test, and the tests check that:

 - the second implementation still reproduces its literals (it guards itself);
 - L{lnt.crypto.pboc} and L{lnt.crypto.securemsg} reproduce exactly the same literals;
 - the published session-key vector holds for the second implementation;
 - for random inputs both implementations agree byte for byte (hypothesis);
 - plausible wrong variants (zero padding, the wrong half of the last block...) give other
   values, so the vectors do discriminate.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from hashlib import sha256

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from lnt.crypto import pboc, securemsg

# ---------------------------------------------------------------------------------------------
# The second implementation (cryptography + standard library only)
# ---------------------------------------------------------------------------------------------

LOAD = 0x02  # transaction type of a purse load


def des_ecb(key8: bytes, block: bytes) -> bytes:
    """Single DES of one 8-byte block: 3DES with the key K || K || K (EDE collapses to E)."""
    assert len(key8) == 8 and len(block) == 8
    encryptor = Cipher(TripleDES(key8 * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def tdes_ecb(key16: bytes, block: bytes) -> bytes:
    """Two-key 3DES (EDE) of one block, keying option 2: K1 || K2 || K1."""
    assert len(key16) == 16 and len(block) == 8
    encryptor = Cipher(TripleDES(key16 + key16[:8]), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def ind_diversify(master: bytes, card_id: bytes) -> bytes:
    """DLK / DTK: 3DES(MK, ID) || 3DES(MK, ID XOR FF..FF)."""
    return tdes_ecb(master, card_id) + tdes_ecb(master, bytes(b ^ 0xFF for b in card_id))


def ind_session_key(dlk: bytes, random4: bytes, serial: int) -> bytes:
    """SESLK = 3DES(DLK, random (4) || online serial (2) || 80 00)."""
    return tdes_ecb(dlk, random4 + serial.to_bytes(2, "big") + b"\x80\x00")


def iso9797_pad2(data: bytes) -> bytes:
    """ISO 9797-1 padding method 2: 80, then 00 up to a multiple of 8 (always adds a byte)."""
    padded = bytearray(data) + b"\x80"
    while len(padded) % 8:
        padded.append(0)
    return bytes(padded)


def cbc_mac_last_block(key8: bytes, padded: bytes) -> bytes:
    """DES-CBC from a zero IV, chained by hand over ECB; the last cipher block."""
    chain = bytes(8)
    for i in range(0, len(padded), 8):
        block = bytes(a ^ b for a, b in zip(chain, padded[i:i + 8], strict=True))
        chain = des_ecb(key8, block)
    return chain


def ind_mac(key8: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1 with padding method 2, single DES, leftmost 4 bytes."""
    return cbc_mac_last_block(key8, iso9797_pad2(data))[:4]


def ind_mac1(seslk: bytes, old_balance: int, amount: int, terminal_id: bytes) -> bytes:
    data = (old_balance.to_bytes(4, "big") + amount.to_bytes(4, "big") + bytes([LOAD])
            + terminal_id)
    return ind_mac(seslk, data)


def ind_mac2(seslk: bytes, amount: int, terminal_id: bytes, when: bytes) -> bytes:
    return ind_mac(seslk, amount.to_bytes(4, "big") + bytes([LOAD]) + terminal_id + when)


def ind_tac_key(dtk: bytes) -> bytes:
    return bytes(left ^ right for left, right in zip(dtk[:8], dtk[8:], strict=True))


def ind_tac(dtk: bytes, new_balance: int, serial: int, amount: int, terminal_id: bytes,
            when: bytes) -> bytes:
    data = (new_balance.to_bytes(4, "big") + serial.to_bytes(2, "big")
            + amount.to_bytes(4, "big") + bytes([LOAD]) + terminal_id + when)
    return ind_mac(ind_tac_key(dtk), data)


def ind_sm_keys(session_key: bytes) -> tuple[bytes, bytes]:
    """(K_enc, K_mac) = HKDF-SHA256(session key, salt "", info "LNT-SM-ENC" / "LNT-SM-MAC")."""
    def derive(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=16, salt=b"", info=info).derive(session_key)
    return derive(b"LNT-SM-ENC"), derive(b"LNT-SM-MAC")


def ind_ctr(k_enc: bytes, direction: bytes, seq: int, data: bytes) -> bytes:
    """AES-128-CTR; the counter block is direction | seq (4) | 00 00 00 | counter (8) from 0."""
    initial = direction + seq.to_bytes(4, "big") + bytes(3) + bytes(8)
    encryptor = Cipher(AES(k_enc), modes.CTR(initial)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def ind_hmac8(k_mac: bytes, data: bytes) -> bytes:
    return hmac.new(k_mac, data, sha256).digest()[:8]


def ind_seal_command(session_key: bytes, ins: int, seq: int, plaintext: bytes,
                     size: int) -> bytes:
    """BB | INS | 00 | 00 | Lc = S - 5 | seq (4) | ciphertext (S - 17) | mac (8)."""
    k_enc, k_mac = ind_sm_keys(session_key)
    header = bytes([0xBB, ins, 0x00, 0x00, size - 5])
    padded = plaintext + bytes(size - 17 - len(plaintext))
    seq4 = seq.to_bytes(4, "big")
    ciphertext = ind_ctr(k_enc, b"C", seq, padded)
    return header + seq4 + ciphertext + ind_hmac8(k_mac, b"C" + header + seq4 + ciphertext)


def ind_seal_answer(session_key: bytes, seq: int, plaintext: bytes, sw: bytes, size: int,
                    direction: bytes = b"A") -> bytes:
    """seq (4) | ciphertext (S - 14) | mac (8) | SW (2)."""
    k_enc, k_mac = ind_sm_keys(session_key)
    padded = plaintext + bytes(size - 14 - len(plaintext))
    seq4 = seq.to_bytes(4, "big")
    ciphertext = ind_ctr(k_enc, direction, seq, padded)
    return seq4 + ciphertext + ind_hmac8(k_mac, direction + seq4 + ciphertext + sw) + sw


# ---------------------------------------------------------------------------------------------
# The inputs, and the literals the second implementation computed for them
# ---------------------------------------------------------------------------------------------

MLK = bytes(range(0x00, 0x10))
MTK = bytes(range(0x10, 0x20))
CARD_ID = bytes.fromhex("5100000000000001")  # logical number, 8 BCD bytes
RANDOM = bytes.fromhex("11223344")
ONLINE_SERIAL = 0x0007
OLD_BALANCE = 1000  # fen
AMOUNT = 500
NEW_BALANCE = OLD_BALANCE + AMOUNT
TERMINAL_ID = bytes.fromhex("000070000472")  # 6 bytes BCD
WHEN = bytes.fromhex("20261125103000")  # date (4) | time (3), BCD

SESSION_KEY = bytes(range(0xA0, 0xB0))
SEQ = 5
INS = 0x30
COMMAND_SIZE = 93  # DD16
ANSWER_SIZE = 106  # DD17
# one relayed APDU: count | len | INITIALIZE FOR LOAD (key 01, 500 fen, the terminal, Le 10)
COMMAND_PLAINTEXT = bytes.fromhex("0111" "805000020B01" "000001F4" "000070000472" "10")
# count | len | the card's answer: balance 1000 | serial 7 | key version 01 | algorithm 02 |
# random | MAC1 (EXPECTED_MAC1) | 9000
ANSWER_PLAINTEXT = bytes.fromhex("0112" "000003E8" "0007" "01" "02" "11223344" "D7547C52" "9000")
SW = bytes.fromhex("9000")

EXPECTED_DLK = "D724A2B5CFEB021B58A84ED9472B613F"
EXPECTED_DTK = "C45CB2F9E96F88682880574F620C0D3D"
EXPECTED_SESLK = "9610F66B2EB13B0C"
EXPECTED_MAC1 = "D7547C52"
EXPECTED_MAC2 = "56823E24"
EXPECTED_TAC_KEY = "ECDCE5B68B638555"
EXPECTED_TAC = "B310192B"
EXPECTED_K_ENC = "4E49856AED04C6320452CF28DDEF4EC2"
EXPECTED_K_MAC = "EBCBE70FE855D970D11CC9590065AEB1"
EXPECTED_COMMAND = (
    "BB30000058"  # header: BB | INS 30 | 00 | 00 | Lc 58
    "00000005"  # seq 5
    "4A2DA21953EEAAF5C4C234CF98D8537418413CD9A6320CD060EF57806AEAB4F5"
    "3E431AB8586BF904AA2CB8C2A06E97649DAC0C4E804C25D607B35EAE940B6579"
    "0D095EF03CE3BA7C3C7072E7"  # ciphertext (76)
    "7760442AF03118B3"  # mac
)
EXPECTED_ANSWER = (
    "00000005"  # seq 5
    "1D1363F7447698DCCE70A9BFE270E9760E1BB7F0AFC2FFA0F869C94DC2FD2295"
    "8825DD9D6001A8295D742B9882BFD54D1AB236ED52A63D4E446584EDB80F8097"
    "701843B355746C0046BBFE4A70C3BF599D98EB2648957724FD1E479E"  # ciphertext (92)
    "745B3E404BE5BD83"  # mac
    "9000"  # SW
)

PUBLISHED_DLK = bytes.fromhex("3F013F013F013F013F013F013F013F01")
PUBLISHED_INPUT = bytes.fromhex("F9CABA9100008000")
PUBLISHED_SESLK = "03015BEA347EA231"


def h(value: bytes) -> str:
    return value.hex().upper()


# ---------------------------------------------------------------------------------------------
# (a) the second implementation reproduces its literals
# ---------------------------------------------------------------------------------------------


def test_independent_pboc_reproduces_the_literals() -> None:
    dlk = ind_diversify(MLK, CARD_ID)
    dtk = ind_diversify(MTK, CARD_ID)
    seslk = ind_session_key(dlk, RANDOM, ONLINE_SERIAL)
    assert h(dlk) == EXPECTED_DLK
    assert h(dtk) == EXPECTED_DTK
    assert h(seslk) == EXPECTED_SESLK
    assert h(ind_mac1(seslk, OLD_BALANCE, AMOUNT, TERMINAL_ID)) == EXPECTED_MAC1
    assert h(ind_mac2(seslk, AMOUNT, TERMINAL_ID, WHEN)) == EXPECTED_MAC2
    assert h(ind_tac_key(dtk)) == EXPECTED_TAC_KEY
    assert h(ind_tac(dtk, NEW_BALANCE, ONLINE_SERIAL, AMOUNT, TERMINAL_ID, WHEN)) == EXPECTED_TAC


def test_independent_secure_messaging_reproduces_the_literals() -> None:
    k_enc, k_mac = ind_sm_keys(SESSION_KEY)
    assert h(k_enc) == EXPECTED_K_ENC
    assert h(k_mac) == EXPECTED_K_MAC
    command = ind_seal_command(SESSION_KEY, INS, SEQ, COMMAND_PLAINTEXT, COMMAND_SIZE)
    answer = ind_seal_answer(SESSION_KEY, SEQ, ANSWER_PLAINTEXT, SW, ANSWER_SIZE)
    assert len(command) == COMMAND_SIZE and len(answer) == ANSWER_SIZE
    assert h(command) == EXPECTED_COMMAND
    assert h(answer) == EXPECTED_ANSWER


def test_independent_des_is_des() -> None:
    """The building block against the classic DES vector (key 0, plaintext 0)."""
    assert h(des_ecb(bytes(8), bytes(8))) == "8CA64DE9C1B123A7"
    assert tdes_ecb(bytes(range(8)) * 2, bytes(8)) == des_ecb(bytes(range(8)), bytes(8))


# ---------------------------------------------------------------------------------------------
# (b) lnt.crypto.pboc returns exactly the literals
# ---------------------------------------------------------------------------------------------


def test_pboc_diversification_matches_the_literals() -> None:
    assert h(pboc.diversify(MLK, CARD_ID)) == EXPECTED_DLK
    assert h(pboc.diversify(MTK, CARD_ID)) == EXPECTED_DTK


def test_pboc_session_key_matches_the_literal() -> None:
    dlk = bytes.fromhex(EXPECTED_DLK)
    assert h(pboc.session_key(dlk, RANDOM, ONLINE_SERIAL)) == EXPECTED_SESLK


def test_pboc_mac1_mac2_match_the_literals() -> None:
    seslk = bytes.fromhex(EXPECTED_SESLK)
    assert h(pboc.mac1(seslk, OLD_BALANCE, AMOUNT, TERMINAL_ID)) == EXPECTED_MAC1
    assert h(pboc.mac2(seslk, AMOUNT, TERMINAL_ID, WHEN)) == EXPECTED_MAC2


def test_pboc_tac_matches_the_literal() -> None:
    dtk = bytes.fromhex(EXPECTED_DTK)
    assert h(pboc.tac_key(dtk)) == EXPECTED_TAC_KEY
    assert h(pboc.tac(dtk, NEW_BALANCE, ONLINE_SERIAL, AMOUNT, TERMINAL_ID, WHEN)) == EXPECTED_TAC


def test_pboc_whole_chain_from_the_master_keys() -> None:
    """From the master keys to MAC1, MAC2 and TAC, the way the core module chains them."""
    seslk = pboc.session_key(pboc.diversify(MLK, CARD_ID), RANDOM, ONLINE_SERIAL)
    dtk = pboc.diversify(MTK, CARD_ID)
    assert (h(pboc.mac1(seslk, OLD_BALANCE, AMOUNT, TERMINAL_ID)),
            h(pboc.mac2(seslk, AMOUNT, TERMINAL_ID, WHEN)),
            h(pboc.tac(dtk, NEW_BALANCE, ONLINE_SERIAL, AMOUNT, TERMINAL_ID, WHEN))) == \
        (EXPECTED_MAC1, EXPECTED_MAC2, EXPECTED_TAC)


# ---------------------------------------------------------------------------------------------
# (c) lnt.crypto.securemsg seals to exactly the literals and opens them back
# ---------------------------------------------------------------------------------------------


def test_securemsg_keys_match_the_literals() -> None:
    keys = securemsg.SMKeys.from_session(SESSION_KEY)
    assert (h(keys.enc), h(keys.mac)) == (EXPECTED_K_ENC, EXPECTED_K_MAC)


def test_securemsg_command_matches_the_literal() -> None:
    keys = securemsg.SMKeys.from_session(SESSION_KEY)
    command = keys.seal_command(INS, SEQ, COMMAND_PLAINTEXT, COMMAND_SIZE)
    assert h(command) == EXPECTED_COMMAND
    ins, seq, plaintext = keys.open_command(bytes.fromhex(EXPECTED_COMMAND))
    assert (ins, seq) == (INS, SEQ)
    assert plaintext == COMMAND_PLAINTEXT.ljust(COMMAND_SIZE - 17, b"\x00")


def test_securemsg_answer_matches_the_literal() -> None:
    keys = securemsg.SMKeys.from_session(SESSION_KEY)
    answer = keys.seal_answer(SEQ, ANSWER_PLAINTEXT, SW, ANSWER_SIZE)
    assert h(answer) == EXPECTED_ANSWER
    seq, plaintext, sw = keys.open_answer(bytes.fromhex(EXPECTED_ANSWER), SEQ)
    assert (seq, sw) == (SEQ, SW)
    assert plaintext == ANSWER_PLAINTEXT.ljust(ANSWER_SIZE - 14, b"\x00")


def test_securemsg_refuses_a_tampered_literal() -> None:
    keys = securemsg.SMKeys.from_session(SESSION_KEY)
    command = bytearray.fromhex(EXPECTED_COMMAND)
    command[20] ^= 0x01
    with pytest.raises(securemsg.SMError):
        keys.open_command(bytes(command))
    answer = bytearray.fromhex(EXPECTED_ANSWER)
    answer[-1] ^= 0x01  # the SW is covered by the mac
    with pytest.raises(securemsg.SMError):
        keys.open_answer(bytes(answer), SEQ)


# ---------------------------------------------------------------------------------------------
# (d) the published session-key vector (equal halves: single DES)
# ---------------------------------------------------------------------------------------------


def test_published_session_key_vector_independently() -> None:
    assert h(tdes_ecb(PUBLISHED_DLK, PUBLISHED_INPUT)) == PUBLISHED_SESLK
    assert h(des_ecb(PUBLISHED_DLK[:8], PUBLISHED_INPUT)) == PUBLISHED_SESLK
    assert h(ind_session_key(PUBLISHED_DLK, PUBLISHED_INPUT[:4], 0x0000)) == PUBLISHED_SESLK


# ---------------------------------------------------------------------------------------------
# Wrong variants give other values: the vectors discriminate
# ---------------------------------------------------------------------------------------------


def zero_padding_mac(key8: bytes, data: bytes) -> bytes:
    """ISO 9797-1 padding method 1 (zeros, none when already whole blocks)."""
    return cbc_mac_last_block(key8, data + bytes(-len(data) % 8))[:4]


def rightmost_mac(key8: bytes, data: bytes) -> bytes:
    return cbc_mac_last_block(key8, iso9797_pad2(data))[4:]


def tdes_mac(key8: bytes, data: bytes) -> bytes:
    """Retail-MAC-like mistake: the 8-byte key taken as two-key 3DES with a zero right half."""
    chain = bytes(8)
    padded = iso9797_pad2(data)
    for i in range(0, len(padded), 8):
        block = bytes(a ^ b for a, b in zip(chain, padded[i:i + 8], strict=True))
        chain = tdes_ecb(key8 + bytes(8), block)
    return chain[:4]


WRONG_MACS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "zero padding (method 1)": zero_padding_mac,
    "rightmost 4 bytes": rightmost_mac,
    "3DES instead of DES": tdes_mac,
}


@pytest.mark.parametrize("name", sorted(WRONG_MACS))
def test_wrong_mac_variants_miss_the_literals(name: str) -> None:
    wrong = WRONG_MACS[name]
    seslk = bytes.fromhex(EXPECTED_SESLK)
    tac_key = bytes.fromhex(EXPECTED_TAC_KEY)
    mac1_data = struct.pack(">IIB", OLD_BALANCE, AMOUNT, LOAD) + TERMINAL_ID
    mac2_data = struct.pack(">IB", AMOUNT, LOAD) + TERMINAL_ID + WHEN
    tac_data = struct.pack(">IHIB", NEW_BALANCE, ONLINE_SERIAL, AMOUNT, LOAD) + TERMINAL_ID + WHEN
    # the right variant over the same data gives the literals...
    assert h(ind_mac(seslk, mac1_data)) == EXPECTED_MAC1
    assert h(ind_mac(seslk, mac2_data)) == EXPECTED_MAC2
    assert h(ind_mac(tac_key, tac_data)) == EXPECTED_TAC
    # ...and the wrong one does not
    assert h(wrong(seslk, mac1_data)) != EXPECTED_MAC1
    assert h(wrong(seslk, mac2_data)) != EXPECTED_MAC2
    assert h(wrong(tac_key, tac_data)) != EXPECTED_TAC


def test_wrong_key_derivations_miss_the_literals() -> None:
    dtk = bytes.fromhex(EXPECTED_DTK)
    tac_data = struct.pack(">IHIB", NEW_BALANCE, ONLINE_SERIAL, AMOUNT, LOAD) + TERMINAL_ID + WHEN
    # TAC keyed with the left half only, not left XOR right
    assert h(ind_mac(dtk[:8], tac_data)) != EXPECTED_TAC
    # the right half of the DLK from ID again, not from NOT ID
    assert h(tdes_ecb(MLK, CARD_ID) * 2) != EXPECTED_DLK
    # the session key's input without its 80 00 padding (zeros instead)
    dlk = bytes.fromhex(EXPECTED_DLK)
    wrong_seslk = tdes_ecb(dlk, RANDOM + ONLINE_SERIAL.to_bytes(2, "big") + bytes(2))
    assert h(wrong_seslk) != EXPECTED_SESLK
    # the serial little-endian
    assert h(ind_session_key(dlk, RANDOM, 0x0700)) != EXPECTED_SESLK


def test_wrong_secure_messaging_variants_miss_the_literals() -> None:
    k_enc, k_mac = ind_sm_keys(SESSION_KEY)
    padded = COMMAND_PLAINTEXT.ljust(COMMAND_SIZE - 17, b"\x00")
    header = bytes([0xBB, INS, 0, 0, COMMAND_SIZE - 5])
    seq4 = SEQ.to_bytes(4, "big")
    expected = bytes.fromhex(EXPECTED_COMMAND)
    # the nonce with the seq before the direction
    ct = Cipher(AES(k_enc), modes.CTR(seq4 + b"C" + bytes(11))).encryptor().update(padded)
    assert ct != expected[9:-8]
    # the mac without the direction byte, or without the header
    ct = ind_ctr(k_enc, b"C", SEQ, padded)
    assert ct == expected[9:-8]
    assert ind_hmac8(k_mac, header + seq4 + ct) != expected[-8:]
    assert ind_hmac8(k_mac, b"C" + seq4 + ct) != expected[-8:]
    # the answer under the command's direction
    answer = ind_seal_answer(SESSION_KEY, SEQ, ANSWER_PLAINTEXT, SW, ANSWER_SIZE, b"C")
    assert h(answer) != EXPECTED_ANSWER


# ---------------------------------------------------------------------------------------------
# (e) both implementations agree on random inputs
# ---------------------------------------------------------------------------------------------

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


@settings(deadline=None)
@given(mlk=st.binary(min_size=16, max_size=16), mtk=st.binary(min_size=16, max_size=16),
       card_id=st.binary(min_size=8, max_size=8), random4=st.binary(min_size=4, max_size=4),
       serial=st.integers(min_value=0, max_value=0xFFFF), old_balance=U32, amount=U32,
       terminal_id=st.binary(min_size=6, max_size=6), when=st.binary(min_size=7, max_size=7))
def test_pboc_agrees_with_the_independent_implementation(
        mlk: bytes, mtk: bytes, card_id: bytes, random4: bytes, serial: int, old_balance: int,
        amount: int, terminal_id: bytes, when: bytes) -> None:
    new_balance = (old_balance + amount) & 0xFFFFFFFF
    dlk = ind_diversify(mlk, card_id)
    dtk = ind_diversify(mtk, card_id)
    assert pboc.diversify(mlk, card_id) == dlk
    assert pboc.diversify(mtk, card_id) == dtk
    seslk = ind_session_key(dlk, random4, serial)
    assert pboc.session_key(dlk, random4, serial) == seslk
    assert pboc.mac1(seslk, old_balance, amount, terminal_id) == \
        ind_mac1(seslk, old_balance, amount, terminal_id)
    assert pboc.mac2(seslk, amount, terminal_id, when) == \
        ind_mac2(seslk, amount, terminal_id, when)
    assert pboc.tac(dtk, new_balance, serial, amount, terminal_id, when) == \
        ind_tac(dtk, new_balance, serial, amount, terminal_id, when)


@settings(deadline=None)
@given(key8=st.binary(min_size=8, max_size=8), data=st.binary(max_size=64))
def test_pboc_mac_agrees_on_any_length(key8: bytes, data: bytes) -> None:
    assert pboc.mac(key8, data) == ind_mac(key8, data)


@settings(deadline=None)
@given(session_key=st.binary(min_size=16, max_size=16), seq=U32,
       ins=st.integers(min_value=0, max_value=0xFF), size=st.integers(min_value=17, max_value=255),
       data=st.data())
def test_securemsg_command_agrees_with_the_independent_implementation(
        session_key: bytes, seq: int, ins: int, size: int, data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=size - 17))
    keys = securemsg.SMKeys.from_session(session_key)
    sealed = keys.seal_command(ins, seq, plaintext, size)
    assert sealed == ind_seal_command(session_key, ins, seq, plaintext, size)
    assert keys.open_command(sealed) == (ins, seq, plaintext.ljust(size - 17, b"\x00"))


@settings(deadline=None)
@given(session_key=st.binary(min_size=16, max_size=16), seq=U32,
       sw=st.binary(min_size=2, max_size=2), size=st.integers(min_value=14, max_value=255),
       direction=st.sampled_from([b"A", b"I"]), data=st.data())
def test_securemsg_answer_agrees_with_the_independent_implementation(
        session_key: bytes, seq: int, sw: bytes, size: int, direction: bytes,
        data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=size - 14))
    keys = securemsg.SMKeys.from_session(session_key)
    sealed = keys.seal_answer(seq, plaintext, sw, size, direction)
    assert sealed == ind_seal_answer(session_key, seq, plaintext, sw, size, direction)
    assert keys.open_answer(sealed, seq, direction) == \
        (seq, plaintext.ljust(size - 14, b"\x00"), sw)
