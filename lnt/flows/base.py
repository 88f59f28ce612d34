"""
What every flow shares: the protocol base class, the context handed to flows, and the error
that ends a flow with an info code.

A flow is written as one coroutine, L{FlowProtocol.run}: it receives the first request and
walks the stages in order. Each C{await self.reply(request, info, expect=0xDDxx)} sends a
"continue" response and waits for the next stage, which must carry the header C{expect}; a frame
of any other stage, or one that arrives while the platform is still working on the previous one,
ends the flow with A0. C{self.finish(...)} sends the last response and closes the connection. So
the coroutine's text *is* the state machine: the stage expected next is the C{expect} of the
C{reply} it is suspended in, and every way out is a L{FlowError} with its info code.

Timeouts (all on C{context.clock}, so tests drive them with L{twisted.internet.task.Clock}):
 - idle: no complete frame within C{settings.idle_timeout} of the last answer -> closed;
 - deadline: the whole flow must end within C{settings.flow_deadline} -> closed;
 - backend: a backend call wrapped in L{FlowProtocol.backend} that does not answer within
   C{settings.backend_timeout} ends the flow with DD (system busy).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from lnt import metrics
from lnt.domain.records import Session
from lnt.flows.context import FlowContext
from lnt.interfaces import BackendTimeout, bounded
from lnt.logmask import Logger
from lnt.wire import (
    NO_PKI,
    ChecksumError,
    FlowIndicator,
    FrameDecoder,
    FramingError,
    InfoCode,
    Request,
    Response,
    header_name,
    response_header,
)

T = TypeVar("T")


@lru_cache(maxsize=256)
def _stage(flow: str, header: int) -> Any:
    """The stage histogram's child for a flow and stage, looked up once (six per recharge)."""
    return metrics.STAGE_SECONDS.labels(flow, header_name(header))


class FlowError(Exception):
    """
    Ends the flow: the current stage is answered with C{code} and flow indicator 0xFF.
    C{reason} goes to the log only (it may name internals), never to the wire.
    """

    def __init__(self, code: InfoCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class _Closed(Exception):
    """The connection went away while the flow waited for the terminal."""


class FlowProtocol(Protocol):
    """
    Base of every flow's protocol. Subclasses set C{name} and implement L{run}.
    """

    name: ClassVar[str] = "flow"
    log: ClassVar[Logger] = Logger()
    transport: ITransport | None

    def __init__(self, context: FlowContext) -> None:
        self.context = context
        self.settings = context.settings
        self._decoder = FrameDecoder(Request)
        self._current: Request | None = None
        self._waiting: Deferred[Request] | None = None
        self._expect: int | None = None
        self._run: Deferred[None] | None = None
        self._idle: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._done = False
        #: when the flow's first frame and the frame in work arrived (for the metrics), and
        #: whether the flow's last answer went out
        self._started: float | None = None
        self._frame_at: float | None = None
        self._ended = False
        #: the PKI number this flow answers with; flows set it once the card is known
        self.pki = NO_PKI

    # -- what subclasses write ------------------------------------------------------------

    async def run(self, first: Request) -> None:
        """Walk the flow's stages, starting with its first request."""
        raise NotImplementedError

    def flowEnded(self, reason: str) -> None:
        """
        Called once when the connection ends, however it ends (C{reason}: "finished",
        "closed by peer", "idle timeout", ...). Override to release per-flow resources.
        """

    # -- stage helpers ----------------------------------------------------------------------

    def reply(self, request: Request, info: bytes, *, expect: int,
              header: int | None = None) -> Deferred[Request]:
        """
        Answer C{request} with "continue, success" and C{info}; fire with the next request,
        which must be stage C{expect} (anything else ends the flow with A0 before this fires).
        C{header} answers with another stage than the next one (a flow that skips ahead,
        e.g. to the read-back); by default the answer is the request's stage + 1.
        If the connection has already ended, the coroutine stops here.
        """
        if self._done:
            raise _Closed("connection already closed")
        self._send(request, FlowIndicator.CONTINUE, InfoCode.SUCCESS, info, header)
        d: Deferred[Request] = Deferred()
        self._waiting = d
        self._expect = expect
        self._arm_idle()
        return d

    def finish(
        self, request: Request, code: InfoCode = InfoCode.SUCCESS, info: bytes = b"",
        header: int | None = None,
    ) -> None:
        """Answer C{request} with "end of flow" and C{code}, then close."""
        self._send(request, FlowIndicator.END, code, info, header)
        self._close("finished")

    def backend(self, d: Deferred[T], what: str) -> Deferred[T]:
        """
        C{d} (a backend call) with the backend timeout: if it has not fired in time the flow
        ends with DD (system busy). C{what} names the call in the log.
        """

        def busy(f: Failure) -> Failure:
            if f.check(BackendTimeout):
                metrics.BACKEND_TIMEOUTS.labels(f"{self.name}: {what}").inc()
                raise FlowError(InfoCode.SYSTEM_BUSY, str(f.value))
            return f

        return bounded(d, self.settings.backend_timeout, self.context.clock, what
                       ).addErrback(busy)

    async def require_session(self, request: Request) -> Session:
        """
        The live sign-in session of the request's PKI card, bound to its user ID; otherwise
        the flow ends with BB (not signed in), and the terminal must sign in again.
        """
        session = await self.backend(
            self.context.ledger.session(request.pki, self.context.now_ms()), "session"
        )
        if session is None or session.user_id != request.user_id:
            raise FlowError(
                InfoCode.NOT_SIGNED_IN,
                f"no live session for PKI {request.pki} and this user ID",
            )
        self.pki = session.pki_no
        return session

    def expect_info(self, request: Request, size: int, what: str) -> bytes:
        """The request's info if it has exactly C{size} bytes; else the flow ends with CC."""
        if len(request.info) != size:
            raise FlowError(
                InfoCode.READER_BAD_LENGTH,
                f"{header_name(request.header)} {what}: {len(request.info)} bytes, not {size}",
            )
        return request.info

    # -- Protocol ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._deadline = self.context.clock.callLater(
            self.settings.flow_deadline, self._timed_out, "flow deadline"
        )
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            for frame in self._decoder.feed(data):
                self._frame_received(frame)
                if self._done:
                    return
        except ChecksumError as e:
            self.log.warn(
                "{flow}: CRC mismatch in {stage}, answering A2", flow=self.name,
                stage=header_name(e.header),
            )
            self._send_raw(
                Response(
                    header=response_header(e.header),
                    user_id=e.user_id,
                    flow=FlowIndicator.END,
                    code=InfoCode.BAD_CHECKSUM,
                    pki=self.pki,
                    info=b"",
                )
            )
            self._close("bad CRC")
        except FramingError as e:
            self.log.warn("{flow}: framing error, closing: {error}", flow=self.name, error=str(e))
            self._close("framing error")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._close("closed by peer")

    # -- internals --------------------------------------------------------------------------

    def _frame_received(self, frame: Request) -> None:
        self._cancel_idle()
        self._frame_at = self.context.clock.seconds()
        if self._run is None:
            self._started = self._frame_at
            self._current = frame
            if frame.step != 0x00:
                self._fail(FlowError(InfoCode.OUT_OF_ORDER, "first stage must carry step 0x00"))
                return
            self._run = Deferred.fromCoroutine(self._guarded(frame))
            return
        waiting, expect = self._waiting, self._expect
        self._waiting = self._expect = None
        if waiting is None:
            self._current = frame
            self._fail(
                FlowError(
                    InfoCode.OUT_OF_ORDER,
                    f"{header_name(frame.header)} arrived while the previous stage was in work",
                )
            )
            return
        previous = self._current
        self._current = frame
        assert previous is not None
        if frame.header != expect or frame.step != 0x01:
            self._fail(
                FlowError(
                    InfoCode.OUT_OF_ORDER,
                    f"expected {header_name(expect or 0)} step 01, got "
                    f"{header_name(frame.header)} step {frame.step:02X}",
                )
            )
            return
        if frame.user_id != previous.user_id:
            self._fail(FlowError(InfoCode.OUT_OF_ORDER, "user ID changed within the flow"))
            return
        waiting.callback(frame)

    async def _guarded(self, first: Request) -> None:
        try:
            await self.run(first)
        except FlowError as e:
            self._fail(e)
        except (CancelledError, _Closed):
            pass
        except Exception:
            self.log.failure("{flow}: unexpected error", flow=self.name)
            self._fail(FlowError(InfoCode.BACKEND_ERROR, "unexpected error"))
        else:
            if not self._done:
                self.log.error("{flow}: run() returned without finishing", flow=self.name)
                self._fail(FlowError(InfoCode.BACKEND_ERROR, "flow ended without an answer"))

    def _fail(self, error: FlowError) -> None:
        if self._done:
            return
        self.log.info(
            "{flow}: ended with {code:02X} ({meaning}) at {stage}: {reason}",
            flow=self.name,
            code=int(error.code),
            meaning=error.code.meaning,
            stage=header_name(self._current.header) if self._current else "-",
            reason=error.reason,
        )
        if self._current is not None:
            self._send(self._current, FlowIndicator.END, error.code, b"")
        self._close(f"ended with {error.code.name}")

    def _send(self, request: Request, flow: FlowIndicator, code: InfoCode, info: bytes,
              header: int | None = None) -> None:
        self._send_raw(
            Response(
                header=header or response_header(request.header),
                user_id=request.user_id,
                flow=flow,
                code=code,
                pki=self.pki,
                info=info,
            )
        )

    def _send_raw(self, response: Response) -> None:
        if self.transport is not None and not self._done:
            self.transport.write(response.encode())
            self._observe(response)

    def _observe(self, response: Response) -> None:
        now = self.context.clock.seconds()
        if self._frame_at is not None and self._current is not None:
            _stage(self.name, self._current.header).observe(now - self._frame_at)
            self._frame_at = None
        if response.flow == FlowIndicator.END:
            self._ended = True
            metrics.FLOWS.labels(self.name, f"{int(response.code):02X}").inc()
            if self._started is not None:
                metrics.FLOW_SECONDS.labels(self.name).observe(now - self._started)

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self._idle = self.context.clock.callLater(
            self.settings.idle_timeout, self._timed_out, "idle timeout"
        )

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timed_out(self, why: str) -> None:
        self.log.info("{flow}: {why}, closing", flow=self.name, why=why)
        self._close(why)

    def _close(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        if not self._ended and self._started is not None:
            # the terminal went away, or a timeout closed the flow: no answer was sent
            metrics.FLOWS.labels(self.name, "closed").inc()
        self._cancel_idle()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self.transport is not None:
            self.transport.loseConnection()
        # A coroutine waiting for the terminal stops now; one waiting on a backend call is not
        # cancelled (a ledger write that started must complete) and stops at its next reply().
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(_Closed(reason))
        self.flowEnded(reason)
