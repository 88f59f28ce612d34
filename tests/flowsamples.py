"""
Small flows that take each branch of L{lnt.flows.base.FlowProtocol} (tests/test_dispatch.py):
a backend that never answers, a stage still in work when the next frame comes, an unexpected
error, a run that returns without answering, a run that waits forever.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from lnt.flows.base import FlowProtocol
from lnt.wire import InfoCode, Request

#: Deferreds the flows wait on, so that a test can fire them
PENDING: list[Deferred[object]] = []


def _never() -> Deferred[object]:
    d: Deferred[object] = Deferred()
    PENDING.append(d)
    return d


class SlowBackendFlow(FlowProtocol):
    name = "slow-backend"

    async def run(self, first: Request) -> None:
        await self.backend(_never(), "a ledger that hangs")
        self.finish(first, InfoCode.SUCCESS)


class BusyStageFlow(FlowProtocol):
    """Answers its first stage, then works on the second (a backend call) for a while."""

    name = "busy-stage"

    async def run(self, first: Request) -> None:
        second = await self.reply(first, b"", expect=first.header + 2)
        await self.backend(_never(), "slow work")
        self.finish(second, InfoCode.SUCCESS)


class CrashingFlow(FlowProtocol):
    name = "crashing"

    async def run(self, first: Request) -> None:
        raise RuntimeError("a bug")


class SilentFlow(FlowProtocol):
    name = "silent"

    async def run(self, first: Request) -> None:
        return None


class EndlessFlow(FlowProtocol):
    name = "endless"

    async def run(self, first: Request) -> None:
        await _never()  # not a backend call: only the flow deadline ends it
