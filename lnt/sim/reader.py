"""
The simulated card reader (the terminal's "core module"): it executes the 0x40-prefixed
commands the platform sends, exactly as docs/protocol.rst defines them, with the PKI card it
holds.

The reader is synchronous and knows nothing about the network: the terminal hands it each
stage's info with 0x40 in front and sends back what it answers. Every answer has the fixed size
of its stage (terminals use fixed buffers); a refusal is that many zero bytes ending in an
error status word.

Its state (the PKI card's sign-in counter, the session it holds) is kept in a JSON file, so
that consecutive runs of the CLI behave like one device.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from Crypto.Random import get_random_bytes

from lnt.crypto.ec import PrivateKey, generate, sign, verify
from lnt.crypto.securemsg import SMError, SMKeys, refusal
from lnt.domain.records import CHINA
from lnt.jsonfile import write_json_atomically
from lnt.keyfiles import CardKeyFile
from lnt.messages.login import (
    CLA,
    INS_INIT,
    INS_LOGIN_1,
    INS_LOGIN_2,
    LABEL_2,
    SIZE_DD03,
    SIZE_DD05,
    SIZE_DD07,
    InitAnswer,
    Login1Answer,
    Login2Answer,
    Login2Command,
    SchemeError,
    derive_keys,
    ephemeral_public,
    failed_answer,
    login1_signed,
    login3_signed,
    shared_secret,
    transcript,
)
from lnt.messages.purse import (
    DD73,
    SIZE,
    SIZE_M1_DD19,
    CardInfo,
    DepositInit,
    DepositProcess,
    Ins,
    LoadContext,
    LoadRecord,
    M1Load,
    PurseType,
    ReaderStatus,
    apdu_list,
    m1_blocks_answer,
    parse_apdu_list,
    parse_value_block,
)
from lnt.messages.statuswords import (
    SW_CONDITIONS,
    SW_NO_CARD,
    SW_OK,
    SW_SECURITY,
    SW_UNKNOWN_CLA,
    SW_UNKNOWN_INS,
    SW_WRONG_LENGTH,
)
from lnt.sim.virtualcards import Card, CPUCard, M1Card
from lnt.wire import decode_bcd, encode_bcd

COMMAND_PREFIX = 0x40
#: the fixed size of each protected command's answer (the stage that carries it)
ANSWER_SIZE = {
    Ins.QRY_PHYSICS_INFO: SIZE[0xDD13],
    Ins.SET_READCARDINFO: SIZE[0xDD15],
    Ins.CPU_LOAD_INIT: SIZE[0xDD17],
    Ins.CPU_LOAD: SIZE[0xDD19],
    Ins.M1_READ: SIZE[0xDD17],
    Ins.M1_LOAD: SIZE_M1_DD19,
    Ins.M1_CPU_QRY: SIZE[0xDD21],
    Ins.DEPOSIT_PROCESS: SIZE[0xDD74],
}


def _now() -> str:
    """The reader's clock, China time, YYYYMMDDhhmmss."""
    return datetime.now(CHINA).strftime("%Y%m%d%H%M%S")
#: no card on the antenna
FIRMWARE = b"SIM1.0"


@dataclass
class ReaderSession:
    serial: str
    session_key: bytes


class Reader:
    def __init__(self, card: CardKeyFile, state_path: Path | None = None,
                 presented: Card | None = None, volatile: bool = False) -> None:
        self.card = card
        #: keep changes in memory until L{save} is called (the load generator's terminals)
        self.volatile = volatile
        #: the transit card on the reader's antenna, if any
        self.presented = presented
        self.state_path = state_path
        self.counter = 0
        #: the last secure-messaging seq executed (replays are refused) and the deposit counter
        self.last_seq = 0
        self.deposit_seq = 0
        #: the load context of R_PUB_SET_READCARDINFO
        self.context: LoadContext | None = None
        #: test aid: the card is pulled away in the middle of an M1 write, after the load
        #: record ("record") or after the primary value block ("value") was written
        self.m1_interrupt: str | None = None
        self.session: ReaderSession | None = None
        #: the session of a sign-in whose DD08 has not come yet
        self.pending: ReaderSession | None = None
        self._login1: tuple[bytes, PrivateKey] | None = None
        self._load()

    # -- state ----------------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        if state.get("pki_no") != self.card.pki_no:
            return  # another card was put in: its state starts afresh
        self.counter = int(state.get("counter", 0))
        self.last_seq = int(state.get("last_seq", 0))
        self.deposit_seq = int(state.get("deposit_seq", 0))
        if state.get("session"):
            self.session = ReaderSession(state["session"]["serial"],
                                         bytes.fromhex(state["session"]["key"]))

    def _changed(self) -> None:
        if not self.volatile:
            self.save()

    def save(self) -> None:
        if self.state_path is None:
            return
        content = {
            "pki_no": self.card.pki_no,
            "counter": self.counter,
            "last_seq": self.last_seq,
            "deposit_seq": self.deposit_seq,
            "session": None if self.session is None else {
                "serial": self.session.serial, "key": self.session.session_key.hex()},
        }
        write_json_atomically(self.state_path, content, 0o600)

    # -- the transit card -------------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        """Pass an APDU (a C{toreader} command) to the card on the antenna."""
        if self.presented is None:
            return SW_NO_CARD
        return self.presented.apdu(apdu)

    # -- commands -------------------------------------------------------------------------

    def execute(self, command: bytes) -> bytes:
        """Run one 0x40-prefixed command; the answer has its stage's fixed size."""
        if len(command) < 6 or command[0] != COMMAND_PREFIX:
            return SW_UNKNOWN_CLA
        apdu = command[1:]
        if apdu[0] != CLA:
            return SW_UNKNOWN_CLA
        ins = apdu[1]
        if ins == INS_INIT:
            return self._init(apdu)
        if ins == INS_LOGIN_1:
            return self._login1_cmd(apdu)
        if ins == INS_LOGIN_2:
            return self._login2_cmd(apdu)
        if ins in set(ANSWER_SIZE):
            return self._protected(apdu)
        return SW_UNKNOWN_INS

    def _init(self, apdu: bytes) -> bytes:
        if len(apdu) != 5:
            return failed_answer(SIZE_DD03, SW_WRONG_LENGTH)
        return InitAnswer(self.card.pki_no, FIRMWARE, self.card.key_version, SW_OK).encode()

    def _login1_cmd(self, apdu: bytes) -> bytes:
        if len(apdu) != 5:
            return failed_answer(SIZE_DD05, SW_WRONG_LENGTH)
        rc = get_random_bytes(8)
        eph = generate()
        ec = ephemeral_public(eph)
        self._login1 = (rc, eph)
        card = self.card
        sig = sign(card.key, login1_signed(card.pki_no, card.user_id, card.key_version, rc, ec))
        return Login1Answer(rc, sig, ec, SW_OK).encode()

    def _login2_cmd(self, apdu: bytes) -> bytes:
        if self._login1 is None:
            return failed_answer(SIZE_DD07, SW_CONDITIONS)
        rc, eph = self._login1
        self._login1 = None  # one use
        try:
            cmd = Login2Command.decode(apdu)
        except SchemeError:
            return failed_answer(SIZE_DD07, SW_WRONG_LENGTH)
        card = self.card
        t = transcript(card.pki_no, card.user_id, card.key_version, rc, ephemeral_public(eph),
                       cmd.serial, cmd.ephemeral)
        if not verify(card.platform_public_key, LABEL_2 + t, cmd.signature):
            return failed_answer(SIZE_DD07, SW_SECURITY)
        try:
            keys = derive_keys(shared_secret(eph, cmd.ephemeral), rc, cmd.serial, t)
            serial = decode_bcd(cmd.serial)
        except (SchemeError, ValueError):
            return failed_answer(SIZE_DD07, SW_SECURITY)
        self.counter += 1
        answer = Login2Answer(
            pki_no=card.pki_no,
            user_id=card.user_id,
            serial=cmd.serial,
            key_version=card.key_version,
            confirm=keys.confirm(t, self.counter),
            counter=self.counter,
            signature=b"",
            public_key=card.public_key,
            sw=SW_OK,
        )
        signature = sign(card.key, login3_signed(t, answer.block, self.counter))
        answer = replace(answer, signature=signature)
        # The session is the reader's once the platform confirms (DD08 success); until then
        # it is pending.
        self.pending = ReaderSession(serial, keys.session_key)
        self._changed()
        return answer.encode()

    # -- protected commands (recharge, open/close card) ---------------------------------------

    def _sm(self) -> SMKeys | None:
        return None if self.session is None else SMKeys.from_session(self.session.session_key)

    def _protected(self, apdu: bytes) -> bytes:
        size = ANSWER_SIZE[Ins(apdu[1])]
        sm = self._sm()
        if sm is None:
            return refusal(size, SW_CONDITIONS)
        try:
            code, seq, plaintext = sm.open_command(apdu)
        except SMError:
            return refusal(size, SW_SECURITY)
        ins = Ins(code)
        if seq <= self.last_seq:
            return refusal(size, SW_SECURITY)  # a replayed or stale command
        self.last_seq = seq
        self._changed()
        if ins == Ins.DEPOSIT_PROCESS:
            self._deposit_process(plaintext)
            return b""
        answer = self._handlers[ins](self, plaintext)
        return sm.seal_answer(seq, answer, SW_OK, size)

    def _card_info(self, plaintext: bytes) -> bytes:
        card = self.presented
        when = _now()
        tid = encode_bcd(str(self.card.pki_no), 6)
        if card is None:
            return CardInfo(0, bytes(8), "0" * 16, 0, "00000000", 0, 0, ReaderStatus.NO_CARD,
                            when, tid).encode()
        if isinstance(card, CPUCard):
            card.apdu(bytes.fromhex("00A4000002DDF1"))
            ef15 = card.apdu(bytes.fromhex("00B095001E"))[:-2]
            card.apdu(bytes.fromhex("00A4000002ADF1"))
            (balance,) = struct.unpack(">I", card.apdu(bytes.fromhex("805C000204"))[:4])
            return CardInfo(balance, card.physical, decode_bcd(ef15[8:16]), 0x0001, "00000000",
                            PurseType.CPU, ef15[26], ReaderStatus.OK, when, tid).encode()
        issuer = card.apdu(bytes.fromhex("FFB0000410"))[:-2]
        return CardInfo(0, card.physical, decode_bcd(issuer[:8]), 0x0002, "00000000",
                        PurseType.M1, card.deposit_flag, ReaderStatus.OK, when, tid).encode()

    def _set_context(self, plaintext: bytes) -> bytes:
        context = LoadContext.decode(plaintext)
        card = self.presented
        ok = card is not None and (card.logical_no, card.physical) == (context.logical_no,
                                                                       context.physical)
        self.context = context if ok else None
        return context.echo(ReaderStatus.OK if ok else ReaderStatus.CARD_ERROR)

    def _relay(self, plaintext: bytes) -> bytes:
        if self.presented is None:
            return apdu_list([SW_NO_CARD])
        return apdu_list([self.presented.apdu(a) for a in parse_apdu_list(plaintext)])

    def _m1(self) -> M1Card | None:
        return self.presented if isinstance(self.presented, M1Card) else None

    def _m1_read(self, plaintext: bytes) -> bytes:
        card = self._m1()
        sector, key = plaintext[0], plaintext[1:7]
        blocks = plaintext[7:10]
        if card is None:
            return m1_blocks_answer(ReaderStatus.NO_CARD, bytes(16), bytes(16), bytes(16))
        if not card.authenticate(sector, key):
            return m1_blocks_answer(ReaderStatus.WRONG_KEY, bytes(16), bytes(16), bytes(16))
        block, backup, record = (card.read(b) or bytes(16) for b in blocks)
        return m1_blocks_answer(ReaderStatus.OK, block, backup, record)

    def _m1_load(self, plaintext: bytes) -> bytes:
        card = self._m1()
        command = M1Load.decode(plaintext)
        if card is None:
            return bytes((ReaderStatus.NO_CARD,))
        if _now() > command.expires:
            return bytes((ReaderStatus.EXPIRED,))
        if not card.authenticate(command.sector, command.key):
            return bytes((ReaderStatus.WRONG_KEY,))
        current = parse_value_block(card.read(command.block) or b"")
        if current is None:
            current = parse_value_block(card.read(command.backup) or b"")
        if current != command.expected:
            return bytes((ReaderStatus.VALUE_CHANGED,))
        previous = LoadRecord.decode(card.read(command.record_block) or b"")
        if previous is not None and previous.order_no == command.order_no:
            return bytes((ReaderStatus.VALUE_CHANGED,))  # this load was written once already
        # the record first: a read-back can then always name the load whose value it sees
        card.write(command.record_block, command.record)
        if self.m1_interrupt == "record":
            raise ConnectionAbortedError("card removed during the M1 write (after the record)")
        card.write(command.block, command.new_block)
        if self.m1_interrupt == "value":
            # the primary block is written, the backup is not
            raise ConnectionAbortedError("card removed during the M1 write (after the value)")
        card.write(command.backup, command.new_block)
        value = parse_value_block(command.new_block) or 0
        return bytes((ReaderStatus.OK,)) + struct.pack(">i", value)

    def _read_back(self, plaintext: bytes) -> bytes:
        if plaintext[0] == PurseType.CPU:
            return bytes((PurseType.CPU,)) + self._relay(plaintext[1:])
        return bytes((PurseType.M1,)) + self._m1_read(plaintext[1:])

    def _deposit_process(self, plaintext: bytes) -> None:
        process = DepositProcess.decode(plaintext)
        card = self.presented
        if card is not None and card.logical_no == process.logical_no:
            card.set_deposit(process.flag)

    _handlers = {
        Ins.QRY_PHYSICS_INFO: _card_info,
        Ins.SET_READCARDINFO: _set_context,
        Ins.CPU_LOAD_INIT: _relay,
        Ins.CPU_LOAD: _relay,
        Ins.M1_READ: _m1_read,
        Ins.M1_LOAD: _m1_load,
        Ins.M1_CPU_QRY: _read_back,
    }

    def deposit_init(self, op: int) -> bytes:
        """DD73's info: R_DEPOSIT_INIT for the card on the antenna, sealed on our initiative."""
        sm = self._sm()
        card = self.presented
        if sm is None or card is None:
            return refusal(SIZE[DD73], SW_CONDITIONS)
        self.deposit_seq += 1
        self._changed()
        purse = PurseType.CPU if isinstance(card, CPUCard) else PurseType.M1
        init = DepositInit(op, card.logical_no, card.physical, card.deposit_flag, purse, _now(),
                           ReaderStatus.OK)
        return sm.seal_answer(self.deposit_seq, init.encode(), SW_OK, SIZE[DD73], b"I")

    def confirm_session(self) -> None:
        """The platform answered DD08 success: the pending session becomes the session."""
        if self.pending is not None:
            # sequence numbers count per session key: a new session starts again from zero,
            # and commands sealed under the old key no longer open
            self.session, self.pending = self.pending, None
            self.last_seq = 0
            self._changed()
