"""PBOC purse crypto, the core module, the virtual cards and the identify script."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnt.coremodule import FileCoreModule
from lnt.crypto import pboc
from lnt.domain.records import CPU_BALANCE_LIMIT, CardKind, CPULoad, MACError
from lnt.keyfiles import CoreKeys
from lnt.messages import cardscript
from lnt.messages.cardscript import IDENTIFY, Answer, ScriptError, Step, identify
from lnt.messages.purse import LoadRecord, parse_value_block, value_block
from lnt.sim.virtualcards import (
    CPUCard,
    M1Card,
    load_card,
    save_new,
)
from lnt.storage.database import result_of

CORE = CoreKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))
TERMINAL = bytes.fromhex("112233445566")
WHEN = bytes.fromhex("20261123120000")


def test_published_session_key_vector() -> None:
    dlk = bytes.fromhex("3F013F013F013F013F013F013F013F01")
    assert pboc.session_key(dlk, bytes.fromhex("F9CABA91"), 0x0000).hex().upper() == \
        "03015BEA347EA231"


def test_diversification_is_card_specific_and_not_the_master() -> None:
    a = pboc.diversify(CORE.master_load_key, bytes(8))
    b = pboc.diversify(CORE.master_load_key, bytes(7) + b"\x01")
    assert a != b and CORE.master_load_key not in (a, b) and len(a) == 16


def select_purse(card: CPUCard) -> None:
    assert card.apdu(bytes.fromhex("00A4000002ADF1")) == b"\x90\x00"


def init_load(card: CPUCard, amount: int) -> CPULoad:
    answer = card.apdu(bytes.fromhex("805000020B01") + struct.pack(">I", amount) + TERMINAL
                       + b"\x10")
    assert answer[-2:] == b"\x90\x00", answer.hex()
    old, serial, kver, alg = struct.unpack(">IHBB", answer[:8])
    return CPULoad(card.card_id, 1, amount, TERMINAL, old, serial, kver, alg, answer[8:12],
                   answer[12:16], WHEN)


def test_cpu_load_with_the_core_module() -> None:
    core = FileCoreModule(CORE)
    card = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key, 1000)
    select_purse(card)
    assert card.apdu(bytes.fromhex("805C000204")) == struct.pack(">I", 1000) + b"\x90\x00"
    load = init_load(card, 500)
    assert (load.old_balance, load.online_serial) == (1000, 0)
    mac2 = result_of(core.authorize_cpu_load(load))
    answer = card.apdu(bytes.fromhex("805200000B") + WHEN + mac2 + b"\x04")
    assert answer[-2:] == b"\x90\x00"
    assert result_of(core.verify_cpu_tac(load, 1500, answer[:4])) is True
    assert result_of(core.verify_cpu_tac(load, 1501, answer[:4])) is False
    assert (card.balance, card.online_serial) == (1500, 1)


def test_mac1_forged_gets_no_mac2() -> None:
    core = FileCoreModule(CORE)
    card = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key)
    select_purse(card)
    load = init_load(card, 100)
    forged = CPULoad(**{**load.__dict__, "mac1": bytes(4)})
    with pytest.raises(MACError):
        result_of(core.authorize_cpu_load(forged))
    other_issuer = FileCoreModule(CoreKeys(bytes(16), bytes(16), bytes(16)))
    with pytest.raises(MACError):
        result_of(other_issuer.authorize_cpu_load(load))


def test_card_refuses_wrong_mac2_and_limits() -> None:
    card = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key, 99_900)
    select_purse(card)
    init_load(card, 50)
    assert card.apdu(bytes.fromhex("805200000B") + WHEN + bytes(4)) == b"\x93\x02"
    assert card.balance == 99_900
    # CREDIT without INITIALIZE
    assert card.apdu(bytes.fromhex("805200000B") + WHEN + bytes(4)) == b"\x69\x85"
    over = card.apdu(bytes.fromhex("805000020B01") + struct.pack(">I", 101) + TERMINAL)
    assert over == b"\x69\x85" and CPU_BALANCE_LIMIT == 100_000
    wrong_index = card.apdu(bytes.fromhex("805000020B02") + struct.pack(">I", 1) + TERMINAL)
    assert wrong_index == b"\x94\x03"


def test_cards_persist(tmp_path: Path) -> None:
    card = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key, 7)
    path = save_new(card, tmp_path)
    select_purse(card)
    load = init_load(card, 3)
    mac2 = result_of(FileCoreModule(CORE).authorize_cpu_load(load))
    card.apdu(bytes.fromhex("805200000B") + WHEN + mac2)
    again = load_card(path)
    assert isinstance(again, CPUCard) and (again.balance, again.online_serial) == (10, 1)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def m1_card() -> M1Card:
    uid = bytes.fromhex("A1B2C3D4")
    physical = uid.rjust(8, b"\x00")
    return M1Card.issue("5100000000000002", uid, {2: CORE.m1_sector_key(physical, 2)}, 500)


def test_m1_value_blocks_and_keys() -> None:
    card = m1_card()
    assert card.read(8) is None  # not authenticated
    assert not card.authenticate(2, bytes(6))
    key = result_of(FileCoreModule(CORE).m1_sector_keys(card.physical, [2]))[2]
    assert card.authenticate(2, key)
    assert parse_value_block(card.read(8) or b"") == 500
    assert parse_value_block(card.read(9) or b"") == 500  # backup
    damaged = bytearray(value_block(500, 8))
    damaged[5] ^= 1
    assert parse_value_block(bytes(damaged)) is None
    assert card.apdu(bytes.fromhex("00A4000002DDF1")) == b"\x6d\x00"  # no ISO 7816


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 255))
def test_property_value_block_round_trip(value: int, address: int) -> None:
    assert parse_value_block(value_block(value, address)) == value


def test_identify_cpu_and_m1() -> None:
    cpu = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key, 1234)
    answers = cardscript.run(IDENTIFY, cpu.apdu)
    assert [a.seq for a in answers] == [1, 2, 3, 4, 5]
    ident = identify([Answer.decode(a.encode()) for a in answers])
    assert (ident.kind, ident.logical_no, ident.balance) == (CardKind.CPU, "5100000000000001",
                                                             1234)
    assert ident.physical_no == cpu.physical.hex()
    m1 = m1_card()
    answers = cardscript.run(IDENTIFY, m1.apdu)
    assert [a.seq for a in answers] == [1, 2, 6]
    ident = identify(answers)
    assert (ident.kind, ident.logical_no, ident.physical_no) == (
        CardKind.M1, "5100000000000002", "00000000a1b2c3d4")


def test_identify_refuses_answers_off_the_script() -> None:
    cpu = CPUCard.issue("5100000000000001", CORE.master_load_key, CORE.master_tac_key)
    answers = cardscript.run(IDENTIFY, cpu.apdu)
    with pytest.raises(ScriptError, match="step 3 where step 2"):
        identify([answers[0], *answers[2:]])
    with pytest.raises(ScriptError, match="stops before step 4"):
        identify(answers[:3])
    with pytest.raises(ScriptError, match="no card"):
        identify([Answer(1, b"\x6a\x81"), ])
    with pytest.raises(ScriptError):
        Answer.decode("01ff00")
    with pytest.raises(ScriptError):
        Answer.decode(7)


def test_toreader_entries_follow_the_document_grammar() -> None:
    # the document's first entry: seq 01, len 07, SELECT DDF1, expect 9000, next 02, else 00
    step = Step.decode("010700a4000002ddf190000200")
    assert step == Step(1, bytes.fromhex("00a4000002ddf1"), b"\x90\x00", 2, 0)
    assert step.encode() == "010700a4000002ddf190000200"
    assert IDENTIFY[1].encode() == "020700a4000002ddf190000306"
    with pytest.raises(ScriptError):
        Step.decode("0107")


def test_script_that_loops_is_stopped() -> None:
    loop = (Step(1, b"\x00\x00\x00\x00", b"\x90\x00", 1, 1),)
    with pytest.raises(ScriptError, match="does not end"):
        cardscript.run(loop, lambda apdu: b"\x90\x00")


def test_m1_load_record_vector() -> None:
    # CRC-16/XMODEM's catalogue check value, then the documented record (docs/protocol.rst)
    import binascii

    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3
    record = LoadRecord("20261125000000000042", 550)
    assert record.encode().hex() == "20261125000000000042" "00000226" "5fb0"
    assert value_block(550, 8).hex() == "26020000" "d9fdffff" "26020000" "08f708f7"
    assert LoadRecord.decode(record.encode()) == record
    assert LoadRecord.decode(bytes(16)) is None  # a blank block is no record
    damaged = bytearray(record.encode())
    damaged[12] ^= 0x01
    assert LoadRecord.decode(bytes(damaged)) is None


@given(st.text("0123456789", min_size=19, max_size=19), st.integers(-(2**31), 2**31 - 1),
       st.integers(0, 15), st.integers(0, 7))
def test_property_load_record_round_trip_and_damage(digits: str, value: int, byte: int,
                                                    bit: int) -> None:
    order_no = "2" + digits  # order numbers start with their year
    encoded = LoadRecord(order_no, value).encode()
    assert LoadRecord.decode(encoded) == LoadRecord(order_no, value)
    flipped = bytearray(encoded)
    flipped[byte] ^= 1 << bit
    # any single-bit error is caught by the CRC (or the record is blank)
    assert LoadRecord.decode(bytes(flipped)) is None
