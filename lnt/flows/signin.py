"""
Sign-in, DD01-DD08: the mutual authentication of L{lnt.messages.login}, ending in a durable session.

    DD01 (no info)         -> DD02 R_INIT
    DD03 R_INIT answer     -> DD04 R_AC_LOGIN_1, with the PKI number the terminal keeps
    DD05 LOGIN_1 answer    -> DD06 R_AC_LOGIN_2 (serial, platform signature, ephemeral key)
    DD07 LOGIN_2 answer    -> DD08 end, 00 success (the session is durable before this)

Every refusal of the card's identity or proof (unknown, revoked, user ID not bound, other key
version, bad signature, replayed random, failed key confirmation, counter not increasing) ends
the flow with A1 -- one code, so that the answer is no oracle -- and a log line and an audit row
saying which. A reader status word other than 9000 ends it with AA, a wrong info size with CC.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from lnt import metrics
from lnt.crypto.ec import generate, verify
from lnt.flows.base import FlowError, FlowProtocol
from lnt.messages.login import (
    LABEL_2,
    R_AC_LOGIN_1,
    R_INIT,
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
    login1_signed,
    login3_signed,
    shared_secret,
    transcript,
)
from lnt.messages.statuswords import SW_OK
from lnt.wire import InfoCode, Request, encode_bcd, header_name

DD03, DD05, DD07 = 0xDD03, 0xDD05, 0xDD07


#: seconds between two summary lines of refused unknown PKI cards
UNKNOWN_SUMMARY_EVERY = 60.0

class SignInFlow(FlowProtocol):
    name = "sign-in"

    async def run(self, dd01: Request) -> None:
        ctx = self.context
        user_id = dd01.user_id
        if dd01.info:
            raise FlowError(InfoCode.READER_BAD_LENGTH, "DD01 carries no info")

        # DD02 / DD03: who is the card?
        dd03 = await self.reply(dd01, R_INIT, expect=DD03)
        init = InitAnswer.decode(self.expect_info(dd03, SIZE_DD03, "R_INIT answer"))
        self._reader_ok(init.sw, "R_INIT")
        card = await self.backend(ctx.pki.lookup(init.pki_no), "pki lookup")
        if card is None:
            await self._refuse(None, user_id, f"unknown PKI card {init.pki_no}")
        if not card.active:
            await self._refuse(card.pki_no, user_id, "PKI card is revoked")
        if card.user_id != user_id:
            await self._refuse(card.pki_no, user_id, "user ID is not bound to this PKI card")
        if card.key_version != init.key_version:
            await self._refuse(
                card.pki_no,
                user_id,
                f"reader key version {init.key_version}, registered {card.key_version}",
            )
        self.pki = card.pki_no

        # DD04 / DD05: the card proves itself over its fresh random and ephemeral key.
        dd05 = await self.reply(dd03, R_AC_LOGIN_1, expect=DD05)
        self._same_pki(dd05)
        a1 = Login1Answer.decode(self.expect_info(dd05, SIZE_DD05, "R_AC_LOGIN_1 answer"))
        self._reader_ok(a1.sw, "R_AC_LOGIN_1")
        signed = login1_signed(card.pki_no, user_id, card.key_version, a1.card_random, a1.ephemeral)
        if not verify(card.public_key, signed, a1.signature):
            await self._refuse(card.pki_no, user_id, "card signature of R_AC_LOGIN_1 is wrong")
        now = ctx.now_ms()
        serial = await self.backend(
            ctx.ledger.begin_signin(card.pki_no, a1.card_random, now), "begin sign-in"
        )
        if serial is None:
            await self._refuse(card.pki_no, user_id, "R_AC_LOGIN_1 answer replayed")

        # DD06 / DD07: the platform proves itself; the card confirms the session key.
        serial_bcd = encode_bcd(serial, 8)
        ours = generate()
        t = transcript(
            card.pki_no, user_id, card.key_version, a1.card_random, a1.ephemeral, serial_bcd,
            ephemeral_public(ours),
        )
        try:
            keys = derive_keys(shared_secret(ours, a1.ephemeral), a1.card_random, serial_bcd, t)
        except SchemeError as e:
            await self._refuse(card.pki_no, user_id, str(e))
        command = Login2Command(
            serial_bcd, ctx.pki.platform_sign(LABEL_2 + t), ephemeral_public(ours)
        )
        dd07 = await self.reply(dd05, command.encode(), expect=DD07)
        self._same_pki(dd07)
        a2 = Login2Answer.decode(self.expect_info(dd07, SIZE_DD07, "R_AC_LOGIN_2 answer"))
        self._reader_ok(a2.sw, "R_AC_LOGIN_2")
        if (a2.pki_no, a2.user_id, a2.serial, a2.key_version) != (
            card.pki_no, user_id, serial_bcd, card.key_version,
        ):
            await self._refuse(card.pki_no, user_id, "R_AC_LOGIN_2 answer is for another sign-in")
        if a2.public_key != card.public_key:
            await self._refuse(card.pki_no, user_id, "card presents another public key")
        if not verify(card.public_key, login3_signed(t, a2.block, a2.counter), a2.signature):
            await self._refuse(card.pki_no, user_id, "card signature of R_AC_LOGIN_2 is wrong")
        if not hmac.compare_digest(a2.confirm, keys.confirm(t, a2.counter)):
            await self._refuse(card.pki_no, user_id, "key confirmation failed")

        session = await self.backend(
            ctx.ledger.open_session(
                card.pki_no, user_id, serial, keys.session_key, a2.counter, ctx.now_ms(),
                int(ctx.settings.session_ttl * 1000),
            ),
            "open session",
        )
        if session is None:
            await self._refuse(
                card.pki_no, user_id,
                f"sign-in counter {a2.counter} not above the last accepted (cloned card?) "
                "or card revoked meanwhile",
            )
        self.log.info("sign-in: PKI card {pki} signed in, serial {serial}", pki=card.pki_no,
                      serial=serial)
        self.finish(dd07, InfoCode.SUCCESS)

    def _reader_ok(self, sw: bytes, what: str) -> None:
        if sw != SW_OK:
            raise FlowError(InfoCode.READER_ERROR, f"reader answered {what} with SW {sw.hex()}")

    def _same_pki(self, request: Request) -> None:
        if request.pki != self.pki:
            raise FlowError(
                InfoCode.NO_PUBLIC_KEY,
                f"{header_name(request.header)} carries PKI {request.pki}, not {self.pki}",
            )

    async def _refuse(self, pki_no: int | None, user_id: bytes, reason: str) -> NoReturn:
        """
        End the flow with A1; the reason goes to the log and, for a registered card, to the
        audit table. Refusals of unknown cards are counted, not stored: anyone can send them,
        and a row each would let unauthenticated traffic grow the ledger without bound.
        """
        if pki_no is None:
            self._count_unknown()
            raise FlowError(InfoCode.NO_PUBLIC_KEY, reason)
        await self.backend(
            self.context.ledger.record_signin(pki_no, user_id, reason, self.context.now_ms()),
            "record sign-in",
        )
        raise FlowError(InfoCode.NO_PUBLIC_KEY, reason)

    #: refusals of unknown PKI cards since the last summary line, and when that was
    _unknown = 0
    _unknown_logged = -UNKNOWN_SUMMARY_EVERY

    def _count_unknown(self) -> None:
        cls = type(self)
        cls._unknown += 1
        metrics.UNKNOWN_SIGNINS.inc()
        now = self.context.clock.seconds()
        # (a clock behind the last line is another clock: a test's, or the system's set back)
        if now - cls._unknown_logged >= UNKNOWN_SUMMARY_EVERY or now < cls._unknown_logged:
            self.log.warn("sign-in: {n} refusals of unknown PKI cards (not stored; at most one "
                          "such line every {every:.0f} s)", n=cls._unknown,
                          every=UNKNOWN_SUMMARY_EVERY)
            cls._unknown, cls._unknown_logged = 0, now

