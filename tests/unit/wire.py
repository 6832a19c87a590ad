"""Test helpers for talking to a real hub over real sockets (shared by the hub unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from protocol.transport import DealerEndpoint, RouterEndpoint

RECV_TIMEOUT_S = 10.0  # a message the test waits for and that never comes fails the test, not hangs it


async def next_of_kind(ep: DealerEndpoint, kind: str) -> dict:
    """The next message of `kind` on `ep`; messages of other kinds before it are skipped."""
    while True:
        msg = await asyncio.wait_for(ep.recv(), RECV_TIMEOUT_S)
        if msg["kind"] == kind:
            return msg


@contextlib.asynccontextmanager
async def connected(name: str) -> AsyncIterator[tuple[RouterEndpoint, DealerEndpoint, bytes]]:
    """(router, dealer, the dealer's identity at the router): a dealer named `name` that has
    said hello with a heartbeat; both closed on exit."""
    router = RouterEndpoint("tcp://127.0.0.1:0")
    dealer = DealerEndpoint(router.address, name, heartbeat_s=10)
    try:
        await dealer.send("heartbeat")
        identity, _ = await asyncio.wait_for(router.recv(), RECV_TIMEOUT_S)
        yield router, dealer, identity
    finally:
        dealer.close()
        router.close()
