"""asyncio DEALER/ROUTER endpoints over real loopback sockets."""

import asyncio

import pytest
import zmq

from protocol import messages
from protocol.codec import MAX_MESSAGE_BYTES
from protocol.transport import DealerEndpoint, RouterEndpoint
from wire import connected


async def test_round_trip_and_garbage_is_answered():
    router = RouterEndpoint("tcp://127.0.0.1:0")
    dealer = DealerEndpoint(router.address, "actor-x", heartbeat_s=10)
    try:
        await dealer.send("work_request", slots=3)
        identity, msg = await asyncio.wait_for(router.recv(), 5)
        assert identity == b"actor-x" and msg["kind"] == "work_request" and msg["slots"] == 3
        await dealer.send_raw(b"\x00\x01 not a message")
        await dealer.send("heartbeat")
        identity, msg = await asyncio.wait_for(router.recv(), 5)  # garbage skipped, heartbeat delivered
        assert msg["kind"] == "heartbeat" and router.bad_messages == 1
        reply = await dealer.recv(timeout=5)
        assert reply["kind"] == "error" and reply["code"] == "not_msgpack"
        await router.send(identity, "ack", ids=["a", "b"])
        reply = await dealer.recv(timeout=5)
        assert reply["ids"] == ["a", "b"]
    finally:
        dealer.close()
        router.close()


async def test_heartbeats_flow_when_idle_and_silence_is_measured():
    router = RouterEndpoint("tcp://127.0.0.1:0")
    dealer = DealerEndpoint(router.address, "verifier-x", heartbeat_s=0.1)
    dealer.start_heartbeats()
    try:
        kinds = []
        for _ in range(3):
            _, msg = await asyncio.wait_for(router.recv(), 5)
            kinds.append(msg["kind"])
        assert kinds == ["heartbeat"] * 3
        assert await dealer.recv(timeout=0.3) is None
        assert dealer.silent_for() >= 0.3
    finally:
        dealer.close()
        router.close()


async def test_reconnect_gets_through_to_a_new_router_on_the_same_port():
    router = RouterEndpoint("tcp://127.0.0.1:0")
    address = router.address
    dealer = DealerEndpoint(address, "actor-y", heartbeat_s=10)
    try:
        router.close()
        for _ in range(50):  # zmq releases the port asynchronously after close
            try:
                router = RouterEndpoint(address)  # the learner came back on the same address
                break
            except zmq.ZMQError:
                await asyncio.sleep(0.1)
        dealer.reconnect()
        await dealer.send("work_request", slots=1)
        _, msg = await asyncio.wait_for(router.recv(), 5)
        assert msg["slots"] == 1
    finally:
        dealer.close()
        router.close()


async def test_send_to_a_gone_peer_is_dropped_and_reported():
    router = RouterEndpoint("tcp://127.0.0.1:0")
    try:
        assert await router.send(b"nobody", "heartbeat") is False
        assert router.unreachable == {b"nobody"}
    finally:
        router.close()


async def test_a_peer_that_never_reads_cannot_block_the_router():
    """Replies to a flooder that does not read pile up to the high-water mark, then are
    dropped and counted: every send returns at once."""
    router = RouterEndpoint("tcp://127.0.0.1:0")
    flooder = zmq.Context.instance().socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.RCVHWM, 10)
    flooder.setsockopt_string(zmq.IDENTITY, "flooder")
    flooder.connect(router.address)
    try:
        flooder.send(messages.encode(messages.make("heartbeat", "flooder", 0)))
        identity, _ = await asyncio.wait_for(router.recv(), 5)
        sent = [await asyncio.wait_for(router.send(identity, "error", code="x", message="y" * 4000), 1)
                for _ in range(16_000)]
        assert router.dropped_sends > 0 and sent.count(False) == router.dropped_sends
        assert router.unreachable == set()
    finally:
        flooder.close()
        router.close()


async def test_an_oversize_frame_is_refused_inside_zeromq():
    """A frame over MAX_MESSAGE_BYTES never reaches Python: its sender is disconnected, and
    other peers are served."""
    router = RouterEndpoint("tcp://127.0.0.1:0")
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(router.address)
    good = DealerEndpoint(router.address, "actor-z", heartbeat_s=10)
    try:
        big.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
        await good.send("work_request", slots=2)
        identity, msg = await asyncio.wait_for(router.recv(), 10)
        assert identity == b"actor-z" and msg["slots"] == 2
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(router.recv(), 1.0)
        assert router.bad_messages == 0  # refused before any decoding
    finally:
        big.close()
        good.close()
        router.close()


async def test_a_weights_chunk_carries_its_data_as_a_raw_frame():
    async with connected("actor-z") as (router, dealer, identity):
        data = bytes(range(256)) * 4096  # 1 MiB
        await router.send(identity, "weights_chunk", attachment=data, version=3, file="model.safetensors",
                          offset=0, size=len(data))
        msg = await dealer.recv(timeout=5)
        assert isinstance(msg["data"], memoryview) and bytes(msg["data"]) == data and msg["size"] == len(data)
        try:
            await router.send(identity, "ack", attachment=b"x", ids=[])
            raise AssertionError("an ack must not carry an attachment")
        except ValueError:
            pass


async def test_an_unexpected_extra_frame_is_counted_as_bad():
    async with connected("actor-w") as (router, dealer, identity):
        from protocol import messages
        ack = messages.encode(messages.make("ack", "learner", 0, ids=[]))
        await router.sock.send_multipart([identity, ack, b"extra"])
        await router.send(identity, "heartbeat")
        msg = await dealer.recv(timeout=5)
        assert msg["kind"] == "heartbeat" and dealer.bad_messages == 1


async def test_recv_batch_takes_what_is_queued_in_order_and_skips_garbage():
    router = RouterEndpoint("tcp://127.0.0.1:0")
    dealer = DealerEndpoint(router.address, "actor-b", heartbeat_s=10)
    try:
        for i in range(5):
            await dealer.send("work_request", slots=i + 1)
        await dealer.send_raw(b"\xc1 garbage")
        await dealer.send("heartbeat")
        got: list = []
        while len(got) < 6:  # all seven are queued soon; a batch never waits for more
            got += await asyncio.wait_for(router.recv_batch(100), 5)
        assert [m["kind"] for _, m in got] == ["work_request"] * 5 + ["heartbeat"]
        assert [m["slots"] for _, m in got[:5]] == [1, 2, 3, 4, 5] and router.bad_messages == 1
        assert (await dealer.recv(timeout=5))["code"] == "not_msgpack"
        for i in range(3):
            await dealer.send("work_request", slots=1)
        seen = 0
        while seen < 3:
            batch = await asyncio.wait_for(router.recv_batch(2), 5)
            assert 1 <= len(batch) <= 2  # the limit holds
            seen += len(batch)
    finally:
        dealer.close()
        router.close()


async def test_hold_sends_at_the_outermost_exit_and_drops_on_error():
    async with connected("actor-h") as (router, dealer, identity):
        with router.hold():
            await router.send(identity, "ack", ids=["a"])
            with router.hold():
                await router.send(identity, "ack", ids=["b"])
            assert await dealer.recv(timeout=0.3) is None  # nothing left while held
        assert (await dealer.recv(timeout=5))["ids"] == ["a"]
        assert (await dealer.recv(timeout=5))["ids"] == ["b"]
        with pytest.raises(RuntimeError):
            with router.hold():
                await router.send(identity, "ack", ids=["lost"])
                raise RuntimeError("the ledger commit failed")
        await router.send(identity, "ack", ids=["c"])
        assert (await dealer.recv(timeout=5))["ids"] == ["c"]  # the held one was discarded
