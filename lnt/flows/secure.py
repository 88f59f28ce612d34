"""
What the card flows (recharge, open/close card) share: secure messaging with the terminal's
reader under keys from its sign-in session, with sequence numbers reserved in the ledger so that
none is used twice under one key (docs/protocol.rst, "Secure messaging").
"""

from __future__ import annotations

from collections.abc import Iterator

from lnt.crypto.securemsg import SMError, SMKeys
from lnt.domain.records import NotFound, SecureStart, Session
from lnt.flows.base import FlowError, FlowProtocol
from lnt.messages.statuswords import SW_OK
from lnt.wire import InfoCode, Request, encode_bcd

#: secure-messaging sequence numbers one flow may use
SEQS_PER_FLOW = 8


def terminal_id(pki_no: int) -> bytes:
    """The reader's 6-byte terminal ID: its PKI number, 12 BCD digits."""
    return encode_bcd(str(pki_no), 6)


class SecureFlow(FlowProtocol):
    """What both card flows share: secure messaging with the reader."""

    sm: SMKeys
    _seqs: Iterator[int]

    async def require_secure_session(self, request: Request, order_no: str | None = None
                                     ) -> SecureStart:
        """
        L{require_session} and L{_start_sm} in one ledger transaction (one trip to the writer
        instead of two), with the order C{order_no} and the load in doubt on its card read in
        it too: the live session, with secure messaging under its keys ready.
        """
        found: SecureStart | None = await self.backend(
            self.context.ledger.secure_session(request.pki, self.context.now_ms(),
                                               SEQS_PER_FLOW, order_no), "session")
        if found is None or found.session.user_id != request.user_id:
            raise FlowError(InfoCode.NOT_SIGNED_IN,
                            f"no live session for PKI {request.pki} and this user ID")
        self.pki = found.session.pki_no
        self.sm = SMKeys.from_session(found.session.session_key)
        self._seqs = iter(range(found.first_seq, found.first_seq + SEQS_PER_FLOW))
        return found

    async def _start_sm(self, session: Session) -> None:
        self.sm = SMKeys.from_session(session.session_key)
        try:
            first = await self.backend(
                self.context.ledger.reserve_sm_seq(session.pki_no, session.serial,
                                                   SEQS_PER_FLOW), "reserve sm seq")
        except NotFound:
            raise FlowError(InfoCode.NOT_SIGNED_IN, "session replaced during the flow") from None
        self._seqs = iter(range(first, first + SEQS_PER_FLOW))

    def _seq(self) -> int:
        return next(self._seqs)

    def _open(self, request: Request, seq: int, size: int, what: str) -> bytes:
        """The plaintext of a protected reader answer of exactly C{size} bytes."""
        info = self.expect_info(request, size, what)
        sw = info[-2:]
        if sw != SW_OK:
            raise FlowError(InfoCode.READER_ERROR, f"reader answered {what} with SW {sw.hex()}")
        try:
            _, plaintext, _ = self.sm.open_answer(info, seq)
        except SMError as e:
            raise FlowError(InfoCode.READER_ERROR, f"{what}: {e}") from None
        return plaintext
