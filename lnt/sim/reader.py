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
import os
from dataclasses import dataclass, replace
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Random import get_random_bytes

from lnt.backends.keys import CURVE, CardKeyFile, sign, verify
from lnt.signin import (
    CLA,
    INS_INIT,
    INS_LOGIN_1,
    INS_LOGIN_2,
    LABEL_2,
    SIZE_DD03,
    SIZE_DD05,
    SIZE_DD07,
    SW_CONDITIONS,
    SW_OK,
    SW_SECURITY,
    SW_UNKNOWN_CLA,
    SW_UNKNOWN_INS,
    SW_WRONG_LENGTH,
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
from lnt.sim.cards import Card
from lnt.wire import decode_bcd

COMMAND_PREFIX = 0x40
#: no card on the antenna
SW_NO_CARD = b"\x6a\x81"
FIRMWARE = b"SIM1.0"


@dataclass
class ReaderSession:
    serial: str
    session_key: bytes


class Reader:
    def __init__(self, card: CardKeyFile, state_path: Path | None = None,
                 presented: Card | None = None) -> None:
        self.card = card
        #: the transit card on the reader's antenna, if any
        self.presented = presented
        self.state_path = state_path
        self.counter = 0
        self.session: ReaderSession | None = None
        #: the session of a sign-in whose DD08 has not come yet
        self.pending: ReaderSession | None = None
        self._login1: tuple[bytes, ECC.EccKey] | None = None
        self._load()

    # -- state ----------------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        if state.get("pki_no") != self.card.pki_no:
            return  # another card was put in: its state starts afresh
        self.counter = int(state.get("counter", 0))
        if state.get("session"):
            self.session = ReaderSession(state["session"]["serial"],
                                         bytes.fromhex(state["session"]["key"]))

    def _save(self) -> None:
        if self.state_path is None:
            return
        content = {
            "pki_no": self.card.pki_no,
            "counter": self.counter,
            "session": None if self.session is None else {
                "serial": self.session.serial, "key": self.session.session_key.hex()},
        }
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        os.replace(tmp, self.state_path)

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
        return SW_UNKNOWN_INS

    def _init(self, apdu: bytes) -> bytes:
        if len(apdu) != 5:
            return failed_answer(SIZE_DD03, SW_WRONG_LENGTH)
        return InitAnswer(self.card.pki_no, FIRMWARE, self.card.key_version, SW_OK).encode()

    def _login1_cmd(self, apdu: bytes) -> bytes:
        if len(apdu) != 5:
            return failed_answer(SIZE_DD05, SW_WRONG_LENGTH)
        rc = get_random_bytes(8)
        eph = ECC.generate(curve=CURVE)
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
        self._save()
        return answer.encode()

    def confirm_session(self) -> None:
        """The platform answered DD08 success: the pending session becomes the session."""
        if self.pending is not None:
            self.session, self.pending = self.pending, None
            self._save()
