"""
Recharge, DD11-DD22, on CPU and M1 cards; a load is never lost, never done twice, never
guessed (docs/protocol.rst, "Recharge").

    DD11 order                -> DD12 R_PUB_QRY_PHYSICS_INFO (read the card)
    DD13 card info            -> DD14 R_PUB_SET_READCARDINFO (the load's context)
    DD15 context taken        -> DD16 CPU: INITIALIZE FOR LOAD | M1: read the purse
    DD17 MAC1 | purse         -> (pending load made durable) DD18 CPU: CREDIT FOR LOAD with
                                 MAC2 | M1: write the purse (compare and swap)
    DD19 TAC | write result   -> (CPU: TAC verified -> settled) DD20 R_M1_CPU_QRY (read back)
    DD21 purse read back      -> DD22 record (settled), or end A5 (reversed) / A4 (undecided)

A terminal that lost the outcome sends DD11 for the same order again. A settled order is
answered DD22 with its record at once, a reversed one A5; a pending one is read back: after
DD13 the platform answers DD20 directly and decides from what the card shows (CPU: the card's
proof of the load, or an online serial that did not move; M1: the purse value).
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta

from lnt.domain.loads import (
    CPUReadBack,
    Decision,
    M1ReadBack,
    Verdict,
    decide_cpu,
    decide_m1,
    m1_write_ruled_out,
)
from lnt.domain.records import (
    CHINA,
    CPU_BALANCE_LIMIT,
    CardKind,
    Conflict,
    CPULoad,
    Load,
    LoadState,
    MACError,
    NotFound,
    Order,
    OrderState,
)
from lnt.flows.base import FlowError
from lnt.flows.secure import SecureFlow, terminal_id
from lnt.messages.purse import (
    APPLICATION_MERCHANT_LOAD,
    DD13,
    DD15,
    DD17,
    DD19,
    DD20,
    DD21,
    DD22,
    GET_BALANCE,
    M1_BACKUP_BLOCK,
    M1_PURSE_BLOCK,
    M1_PURSE_SECTOR,
    M1_RECORD_BLOCK,
    SELECT_PURSE,
    SIZE,
    SIZE_M1_DD18,
    SIZE_M1_DD19,
    CardInfo,
    DepositOp,
    InitAnswer,
    Ins,
    LayoutError,
    LoadContext,
    LoadRecord,
    M1Load,
    PurseType,
    ReaderStatus,
    apdu_list,
    credit_for_load,
    get_transaction_proof,
    initialize_for_load,
    m1_read,
    parse_apdu_list,
    parse_value_block,
    record,
    value_block,
)
from lnt.messages.statuswords import SW_NO_RECORD, SW_OK
from lnt.wire import InfoCode, Request, decode_bcd, encode_bcd

#: seconds beyond the flow deadline before an M1 load that was sent can be ruled out
M1_CLOCK_MARGIN = 60


class RechargeFlow(SecureFlow):
    name = "recharge"
    #: the order whose load this flow began and has not settled or reversed yet
    _open_load: str | None = None

    def flowEnded(self, reason: str) -> None:
        if self._open_load is not None:
            # money in doubt: journalctl -p warning must show it
            self.log.warn("recharge: order {order} left in doubt: the flow ended ({reason}) "
                          "after the load began; the card's next DD11 reads it back",
                          order=self._open_load, reason=reason)
        super().flowEnded(reason)

    def _dd11(self, dd11: Request) -> tuple[int, str]:
        """DD11's amount and order number."""
        info = self.expect_info(dd11, SIZE[0xDD11], "order")
        if info[0] != APPLICATION_MERCHANT_LOAD:
            raise FlowError(InfoCode.APPLICATION_TYPE_UNKNOWN, f"application type {info[0]:02X}")
        (amount,) = struct.unpack(">I", info[1:5])
        try:
            return amount, decode_bcd(info[5:15])
        except ValueError:
            raise FlowError(InfoCode.ORDER_NOT_FOUND, "order number is not BCD") from None

    async def run(self, dd11: Request) -> None:
        ctx = self.context
        try:
            amount, order_no = self._dd11(dd11)
            malformed = None
        except FlowError as e:
            amount, order_no, malformed = 0, "", e
        # the session, the order, and the load in doubt on its card if any (checked again
        # when a load begins), in one ledger transaction; a DD11 that cannot be read is
        # answered after the session's check, as ever
        start = await self.require_secure_session(dd11, None if malformed else order_no)
        if malformed is not None:
            raise malformed
        session, order, earlier = start.session, start.order, start.earlier
        if order is None:
            raise FlowError(InfoCode.ORDER_NOT_FOUND, f"no order {order_no}")
        if order.amount != amount:
            raise FlowError(InfoCode.ORDER_AMOUNT_MISMATCH,
                            f"order {order_no} is for {order.amount} fen, not {amount}")
        if order.state is OrderState.REVERSED:
            raise FlowError(InfoCode.REVERSAL_DONE, f"order {order_no} was reversed already")

        tid = terminal_id(session.pki_no)

        # DD12 / DD13: which card is on the reader?
        seq = self._seq()
        query = self.sm.seal_command(Ins.QRY_PHYSICS_INFO, seq, encode_bcd(order_no, 10),
                                     SIZE[0xDD12])
        dd13 = await self.reply(dd11, query, expect=DD13)
        try:
            card = CardInfo.decode(self._open(dd13, seq, SIZE[DD13], "card info"))
        except LayoutError as e:
            raise FlowError(InfoCode.READER_ERROR, str(e)) from None
        if card.status != ReaderStatus.OK:
            raise FlowError(InfoCode.READER_ERROR, f"reader status {card.status:02X}")
        if card.purse_type not in (PurseType.CPU, PurseType.M1):
            raise FlowError(InfoCode.PURSE_TYPE_UNKNOWN, f"purse type {card.purse_type:02X}")
        kind = CardKind.CPU if card.purse_type == PurseType.CPU else CardKind.M1
        bound = order.physical_no != ""  # a merchant's top-up binds the card at its load
        if card.logical_no != order.logical_no or (bound and (
                card.physical.hex(), kind) != (order.physical_no, order.card_kind)):
            raise FlowError(InfoCode.ORDER_CARD_MISMATCH,
                            f"order {order_no} is for another card")
        if card.terminal_id != tid:
            raise FlowError(InfoCode.READER_ERROR, "reader reports another terminal ID")

        if order.state is OrderState.LOADED:
            # the card is the order's (checked above): its record again, nothing moves
            load = await self.backend(ctx.ledger.load(order_no), "load")
            assert load is not None and load.new_balance is not None
            self.log.info("recharge: order {order} was loaded already: its record again",
                          order=order_no)
            self.finish(dd13, InfoCode.SUCCESS, self._record(load, load.new_balance),
                        header=DD22)
            return

        if order.state is OrderState.PENDING:
            load = await self.backend(ctx.ledger.load(order_no), "load")
            assert load is not None
            self.log.info("recharge: order {order} is pending: reading the card back",
                          order=order_no)
            dd21, decision = await self._read_back(dd13, load, resumed=True)
            self._answer(dd21, load, decision)
            return

        # At most one load per card in doubt: an earlier one is read back and resolved first,
        # and this order waits for the next DD11 (DD: busy, send again; A4: still in doubt).
        if earlier is not None and earlier.order_no != order_no:
            self.log.info("recharge: order {order} waits: the card has order {earlier} in doubt;"
                          " reading it back first", order=order_no, earlier=earlier.order_no)
            _, decision = await self._read_back(dd13, earlier, resumed=True)
            if decision.verdict is Verdict.IN_DOUBT:
                raise FlowError(InfoCode.REVERSAL_FAILED,
                                f"the card's earlier load (order {earlier.order_no}) is still in"
                                f" doubt ({decision.reason}): no new load until it is resolved")
            raise FlowError(InfoCode.SYSTEM_BUSY,
                            f"the card's earlier load (order {earlier.order_no}) was resolved "
                            f"({decision.verdict.value}): send DD11 for order {order_no} again")

        # A closed card takes no new load (a pending one is still read back above).
        if card.deposit_flag == DepositOp.CLOSE:
            raise FlowError(InfoCode.BACKEND_ERROR, "card is closed (deposit refunded)")

        if kind is CardKind.CPU and card.balance + amount > CPU_BALANCE_LIMIT:
            raise FlowError(InfoCode.BACKEND_ERROR,
                            f"balance {card.balance} + {amount} exceeds {CPU_BALANCE_LIMIT} fen")

        # DD14 / DD15: the load's context
        load_time = datetime.fromtimestamp(ctx.clock.seconds(), CHINA).strftime("%Y%m%d%H%M%S")
        context = LoadContext(order_no, amount, card.purse_type, card.logical_no, card.physical,
                              load_time, 1, tid)
        seq = self._seq()
        dd15 = await self.reply(dd13, self.sm.seal_command(Ins.SET_READCARDINFO, seq,
                                                            context.encode(), SIZE[0xDD14]),
                                expect=DD15)
        echo = self._open(dd15, seq, SIZE[DD15], "load context")
        if echo[:27] != context.echo(ReaderStatus.OK):
            raise FlowError(InfoCode.READER_ERROR, "reader did not take the load context")

        if kind is CardKind.CPU:
            await self._load_cpu(dd15, order, card, context)
        else:
            await self._load_m1(dd15, order, card, context)

    # -- CPU ---------------------------------------------------------------------------------

    async def _load_cpu(self, dd15: Request, order: Order, card: CardInfo,
                        context: LoadContext) -> None:
        ctx = self.context
        seq = self._seq()
        init_cmd = apdu_list([initialize_for_load(1, order.amount, context.terminal_id)])
        dd17 = await self.reply(dd15, self.sm.seal_command(Ins.CPU_LOAD_INIT, seq, init_cmd,
                                                            SIZE[0xDD16]), expect=DD17)
        try:
            [response] = parse_apdu_list(self._open(dd17, seq, SIZE[DD17], "INITIALIZE"))
            init = InitAnswer.decode(response)
        except (LayoutError, ValueError) as e:
            raise FlowError(InfoCode.READER_ERROR, f"INITIALIZE FOR LOAD: {e}") from None
        if init.old_balance + order.amount > CPU_BALANCE_LIMIT:
            raise FlowError(InfoCode.BACKEND_ERROR, "the load would exceed the card limit")
        cpu = CPULoad(encode_bcd(order.logical_no, 8), 1, order.amount, context.terminal_id,
                      init.old_balance, init.online_serial, init.key_version, init.algorithm,
                      init.random, init.mac1, bytes.fromhex(context.load_time))
        try:
            mac2 = await self.backend(ctx.core.authorize_cpu_load(cpu), "authorize load")
        except MACError as e:
            raise FlowError(InfoCode.BACKEND_ERROR, f"card refused by the core module: {e}"
                            ) from None
        load = await self._begin(order, card, context, init.old_balance, init.online_serial,
                                 init.key_version)
        # Only now, with the pending load durable, may MAC2 leave.
        seq = self._seq()
        credit = apdu_list([credit_for_load(context.load_time, mac2)])
        dd19 = await self.reply(dd17, self.sm.seal_command(Ins.CPU_LOAD, seq, credit,
                                                            SIZE[0xDD18]), expect=DD19)
        settled = None
        try:
            [response] = parse_apdu_list(self._open(dd19, seq, SIZE[DD19], "CREDIT"))
            if response[-2:] == SW_OK and len(response) == 6:
                new_balance = init.old_balance + order.amount
                if await self.backend(ctx.core.verify_cpu_tac(cpu, new_balance, response[:4]),
                                      "verify TAC"):
                    settled = await self._settle(load, response[:4].hex(), new_balance)
                else:
                    self.log.warn("recharge: order {order}: TAC does not verify; reading back",
                                  order=order.order_no)
            else:
                self.log.warn("recharge: order {order}: card answered CREDIT with {sw}",
                              order=order.order_no, sw=response[-2:].hex())
        except (FlowError, LayoutError, ValueError) as e:
            # The outcome is in doubt: the read-back decides, never a guess.
            self.log.warn("recharge: order {order}: DD19 unusable ({why}); reading back",
                          order=order.order_no, why=str(e))
        dd21, decision = await self._read_back(dd19, load, settled=settled)
        self._answer(dd21, load, decision)

    # -- M1 ----------------------------------------------------------------------------------

    async def _m1_key(self, physical: str) -> bytes:
        keys = await self.backend(
            self.context.core.m1_sector_keys(bytes.fromhex(physical), [M1_PURSE_SECTOR]),
            "M1 keys")
        return keys[M1_PURSE_SECTOR]

    @staticmethod
    def _m1_sector(plaintext: bytes, what: str) -> M1ReadBack:
        """The purse value and load record of an M1 read (status | 8 | 9 | 10)."""
        if plaintext[0] != ReaderStatus.OK:
            raise FlowError(InfoCode.READER_ERROR, f"{what}: reader status {plaintext[0]:02X}")
        primary = parse_value_block(plaintext[1:17])
        backup = parse_value_block(plaintext[17:33])
        record = LoadRecord.decode(plaintext[33:49])
        # the primary block is written first: when both are good it is the newer one
        value = primary if primary is not None else backup
        return M1ReadBack(value, None if record is None else record.order_no,
                          None if record is None else record.value)

    async def _load_m1(self, dd15: Request, order: Order, card: CardInfo,
                       context: LoadContext) -> None:
        # the card on the reader (checked against the order at DD13) names the sector key: a
        # merchant's top-up order is bound to its physical card only by its first load
        key = await self._m1_key(card.physical.hex())
        seq = self._seq()
        read = m1_read(M1_PURSE_SECTOR, key, M1_PURSE_BLOCK, M1_BACKUP_BLOCK, M1_RECORD_BLOCK)
        dd17 = await self.reply(dd15, self.sm.seal_command(Ins.M1_READ, seq, read, SIZE[0xDD16]),
                                expect=DD17)
        purse = self._m1_sector(self._open(dd17, seq, SIZE[DD17], "M1 purse"), "M1 purse")
        if purse.value is None:
            raise FlowError(InfoCode.READER_ERROR, "M1 purse: both purse blocks are damaged")
        old = purse.value
        new = old + order.amount
        if new > 2**31 - 1:
            raise FlowError(InfoCode.BACKEND_ERROR, "the load would overflow the M1 purse")
        hold_ms = int((self.settings.flow_deadline + M1_CLOCK_MARGIN) * 1000)
        load = await self._begin(order, card, context, old, None, 1, hold_ms)
        expires = (datetime.strptime(card.reader_time, "%Y%m%d%H%M%S")
                   + timedelta(seconds=self.settings.flow_deadline)).strftime("%Y%m%d%H%M%S")
        command = M1Load(M1_PURSE_SECTOR, key, M1_PURSE_BLOCK, M1_BACKUP_BLOCK, old,
                         value_block(new, M1_PURSE_BLOCK), expires, order.order_no,
                         M1_RECORD_BLOCK, LoadRecord(order.order_no, new).encode())
        seq = self._seq()
        dd19 = await self.reply(dd17, self.sm.seal_command(Ins.M1_LOAD, seq, command.encode(),
                                                            SIZE_M1_DD18), expect=DD19)
        try:
            result = self._open(dd19, seq, SIZE_M1_DD19, "M1 load")
            if result[0] != ReaderStatus.OK:
                self.log.warn("recharge: order {order}: M1 load status {status:02X}",
                              order=order.order_no, status=result[0])
        except FlowError as e:
            self.log.warn("recharge: order {order}: DD19 unusable ({why}); reading back",
                          order=order.order_no, why=e.reason)
        # The read-back goes to the same reader under a later seq: once it answers, the write
        # can no longer happen, so the read-back may rule the load out.
        dd21, decision = await self._read_back(dd19, load, m1_key=key)
        self._answer(dd21, load, decision)

    # -- common --------------------------------------------------------------------------

    async def _begin(self, order: Order, card: CardInfo, context: LoadContext,
                     old_balance: int, online_serial: int | None, key_version: int,
                     hold_ms: int = 0) -> Load:
        now = self.context.now_ms()
        kind = CardKind.CPU if card.purse_type == PurseType.CPU else CardKind.M1
        load = Load(order.order_no, self.pki, kind, order.logical_no,
                    card.physical.hex(), order.amount, old_balance, online_serial,
                    context.terminal_id.hex(), context.load_time, key_version,
                    LoadState.PENDING, None, None, now, now, now + hold_ms if hold_ms else 0)
        try:
            begun = await self.backend(self.context.ledger.begin_load(load), "begin load")
        except (Conflict, NotFound) as e:
            raise FlowError(InfoCode.ORDER_MISSING, str(e)) from None
        self._open_load = begun.order_no
        return begun

    async def _settle(self, load: Load, tac: str | None, new_balance: int) -> Load:
        try:
            settled = await self.backend(
                self.context.ledger.settle_load(load.order_no, tac, new_balance,
                                                self.context.now_ms()), "settle")
        except Conflict as e:
            raise FlowError(InfoCode.REVERSAL_FAILED, str(e)) from None
        self._open_load = None
        self.log.info("recharge: order {order} loaded, {amount} fen", order=load.order_no,
                      amount=load.amount)
        return settled

    async def _reverse(self, load: Load) -> None:
        try:
            await self.backend(self.context.ledger.reverse_load(load.order_no,
                                                                self.context.now_ms()), "reverse")
        except Conflict as e:
            raise FlowError(InfoCode.REVERSAL_FAILED, str(e)) from None
        self._open_load = None
        self.log.info("recharge: order {order} reversed: the card shows no load",
                      order=load.order_no)

    @staticmethod
    def _record(load: Load, balance: int | None) -> bytes:
        """DD22's record of a settled load, with the balance after it."""
        assert balance is not None
        return record(load.order_no, load.pki_no, load.logical_no, load.amount, balance)

    async def _read_back(self, request: Request, load: Load, *, resumed: bool = False,
                         settled: Load | None = None, m1_key: bytes | None = None
                         ) -> tuple[Request, Decision]:
        """
        DD20 / DD21: read the purse back, let L{lnt.domain.loads} decide from what the card
        shows, and make the decision durable (settled or reversed; in doubt changes nothing).
        Returns DD21 (to answer) and the decision.
        """
        ctx = self.context
        seq = self._seq()
        if load.card_kind is CardKind.CPU:
            assert load.online_serial is not None
            body = bytes((PurseType.CPU,)) + apdu_list(
                [SELECT_PURSE, GET_BALANCE, get_transaction_proof(load.online_serial)])
        else:
            key = m1_key or await self._m1_key(load.physical_no)
            body = bytes((PurseType.M1,)) + m1_read(M1_PURSE_SECTOR, key, M1_PURSE_BLOCK,
                                                    M1_BACKUP_BLOCK, M1_RECORD_BLOCK)
        command = self.sm.seal_command(Ins.M1_CPU_QRY, seq, body, SIZE[DD20])
        dd21 = await self.reply(request, command, expect=DD21,
                                header=DD20 if resumed else None)
        plaintext = self._open(dd21, seq, SIZE[DD21], "read-back")
        if settled is not None:
            assert settled.new_balance is not None and settled.tac is not None
            return dd21, Decision(Verdict.SETTLE, "the card's TAC verified at DD19",
                                  settled.new_balance, settled.tac)
        if load.card_kind is CardKind.CPU:
            decision = decide_cpu(load, await self._cpu_proof(load, plaintext))
        else:
            if plaintext[0] != PurseType.M1:
                raise FlowError(InfoCode.READER_ERROR, "read-back is not an M1 answer")
            seen = self._m1_sector(plaintext[1:], "M1 read-back")
            ruled_out = m1_write_ruled_out(load, reader_pki=self.pki, now_ms=ctx.now_ms())
            decision = decide_m1(load, seen, ruled_out=ruled_out)
        if decision.verdict is Verdict.SETTLE:
            assert decision.new_balance is not None
            await self._settle(load, decision.tac, decision.new_balance)
        elif decision.verdict is Verdict.REVERSE:
            await self._reverse(load)
        else:
            self._open_load = None  # said here, once
            self.log.warn("recharge: order {order} stays in doubt: {why}", order=load.order_no,
                          why=decision.reason)
        return dd21, decision

    async def _cpu_proof(self, load: Load, plaintext: bytes) -> CPUReadBack:
        """What GET TRANSACTION PROOF answered, the TAC checked by the core module."""
        try:
            _select, _balance, proof = parse_apdu_list(plaintext[1:])
        except (LayoutError, ValueError):
            raise FlowError(InfoCode.READER_ERROR, "read-back does not parse") from None
        if proof[-2:] == SW_OK and len(proof) == 6:
            cpu = CPULoad(encode_bcd(load.logical_no, 8), 1, load.amount,
                          bytes.fromhex(load.terminal_id), load.old_balance,
                          load.online_serial or 0, load.key_version, 0, b"", b"",
                          bytes.fromhex(load.load_time))
            verified = await self.backend(
                self.context.core.verify_cpu_tac(cpu, load.old_balance + load.amount,
                                                 proof[:4]), "verify TAC")
            return CPUReadBack(tac=proof[:4], tac_verified=verified)
        if proof[-2:] == SW_NO_RECORD and len(proof) == 4:
            return CPUReadBack(current_serial=struct.unpack(">H", proof[:2])[0])
        return CPUReadBack()

    def _answer(self, dd21: Request, load: Load, decision: Decision) -> None:
        """End the flow of the load's own order with what the read-back decided."""
        if decision.verdict is Verdict.SETTLE:
            self.finish(dd21, InfoCode.SUCCESS, self._record(load, decision.new_balance))
            return
        if decision.verdict is Verdict.REVERSE:
            raise FlowError(InfoCode.REVERSAL_DONE, f"order {load.order_no} reversed")
        raise FlowError(InfoCode.REVERSAL_FAILED,
                        f"order {load.order_no} stays in doubt: {decision.reason}")
