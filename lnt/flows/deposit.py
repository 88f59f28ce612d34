"""
Open/close card, DD73/DD74 (docs/protocol.rst, "Open/close card"): the reader's R_DEPOSIT_INIT
answer, sealed on its own initiative with its deposit counter, and the platform's
R_DEPOSIT_PROCESS, which the reader executes on the card. The operation is in the ledger (and
the card registry) before the answer leaves.
"""

from __future__ import annotations

from lnt.crypto.securemsg import SMError, SMKeys
from lnt.flows.base import FlowError
from lnt.flows.secure import SecureFlow
from lnt.messages.purse import (
    SIZE,
    DepositInit,
    DepositOp,
    DepositProcess,
    Ins,
    LayoutError,
    PurseType,
    ReaderStatus,
)
from lnt.messages.statuswords import SW_OK
from lnt.wire import InfoCode, Request


class DepositFlow(SecureFlow):
    """
    Open/close card, DD73/DD74: the reader's R_DEPOSIT_INIT answer (made on its own
    initiative, sealed with its deposit counter) -> the platform records the operation and
    answers R_DEPOSIT_PROCESS, which the reader executes on the card.
    """

    name = "card-deposit"

    async def run(self, dd73: Request) -> None:
        ctx = self.context
        session = await self.require_session(dd73)
        info = self.expect_info(dd73, SIZE[0xDD73], "R_DEPOSIT_INIT answer")
        if info[-2:] != SW_OK:
            raise FlowError(InfoCode.READER_ERROR, f"reader answered SW {info[-2:].hex()}")
        self.sm = SMKeys.from_session(session.session_key)
        try:
            counter, plaintext, _ = self.sm.open_answer(info, None, b"I")
            init = DepositInit.decode(plaintext)
        except (SMError, LayoutError) as e:
            raise FlowError(InfoCode.READER_ERROR, f"R_DEPOSIT_INIT answer: {e}") from None
        if not await self.backend(ctx.ledger.note_deposit_seq(session.pki_no, counter),
                                  "deposit counter"):
            raise FlowError(InfoCode.READER_ERROR, "R_DEPOSIT_INIT answer replayed")
        if init.status != ReaderStatus.OK:
            raise FlowError(InfoCode.READER_ERROR, f"reader status {init.status:02X}")
        if init.op not in (DepositOp.OPEN, DepositOp.CLOSE):
            raise FlowError(InfoCode.APPLICATION_TYPE_UNKNOWN, f"operation {init.op:02X}")
        if init.purse_type not in (PurseType.CPU, PurseType.M1):
            raise FlowError(InfoCode.PURSE_TYPE_UNKNOWN, f"purse type {init.purse_type:02X}")
        if init.flag == init.op:
            self.log.info("card-deposit: card already {state}",
                          state="open" if init.op == DepositOp.OPEN else "closed")
        await self._start_sm(session)
        record_id = await self.backend(ctx.ledger.record_deposit(
            init.logical_no, init.physical.hex(), init.op, init.op, session.pki_no,
            ctx.now_ms()), "record deposit")
        process = DepositProcess(init.op, init.logical_no, init.physical, init.op,
                                 str(record_id))
        command = self.sm.seal_command(Ins.DEPOSIT_PROCESS, self._seq(), process.encode(),
                                       SIZE[0xDD74])
        self.log.info("card-deposit: {op} recorded as {record} by PKI {pki}",
                      op="open" if init.op == DepositOp.OPEN else "close", record=record_id,
                      pki=session.pki_no)
        self.finish(dd73, InfoCode.SUCCESS, command)
