"""Decoder fuzz (issue 12): over 100,000 generated inputs reach `messages.decode` and the
only exception is `ProtocolError`; an over-size message is refused before decoding; a
decode's peak memory stays under twice the message size limit.

Hypothesis draws the inputs with a fixed seed (`derandomize`), in batches so that
generation stays cheap: each example is a list of inputs, and each test counts what it
fed the decoder and asserts its share of the 100,000."""

from __future__ import annotations

import tracemalloc

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import MAX_ARRAY_BYTES, MAX_ELEMENTS, MAX_MESSAGE_BYTES, ProtocolError, pack, unpack
from protocol.messages import PROTO, SCHEMAS, decode, encode, make
from test_messages import valid

def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BASES = [encode(make(kind, "peer-0", 7, **valid(kind))) for kind in sorted(SCHEMAS)]
TOTAL_REQUIRED = 100_000
SHARES = {"mutations": 45_000, "random_bytes": 20_000, "trees": 20_000, "fields": 15_000}  # sums to 100,000


def feed(data: bytes) -> bool:
    """Decode; True if it was a valid message. Anything but ProtocolError fails the test."""
    try:
        decode(data)
        return True
    except ProtocolError:
        return False


class Script:
    """Reads a hypothesis-drawn byte string as a stream of choices (0 when exhausted), so one
    cheap draw yields many inputs and hypothesis still shrinks a failing script."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1] if self.pos <= len(self.data) else 0

    def int(self, n: int) -> int:
        """0 <= value < n from two bytes."""
        return ((self.byte() << 8) | self.byte()) % n

    def bytes(self, n: int) -> bytes:
        return bytes(self.byte() for _ in range(n))

    def tree(self, depth: int = 0):
        """A msgpack-able value: scalars of every type, lists and str-keyed maps."""
        k = self.byte() % (10 if depth < 3 else 7)
        if k == 0:
            return None
        if k == 1:
            return bool(self.byte() & 1)
        if k == 2:
            return int.from_bytes(self.bytes(8), "little", signed=bool(self.byte() & 1)) >> self.byte() % 64
        if k == 3:
            return float(np.frombuffer(self.bytes(8), np.float64)[0])
        if k == 4:
            return self.bytes(self.byte() % 6).decode("latin-1")
        if k == 5:
            return self.bytes(self.byte() % 6)
        if k == 6:
            return ["x", "kind", "proto", "0", "\u00e9", ""][self.byte() % 6]
        if k in (7, 8):
            return [self.tree(depth + 1) for _ in range(self.byte() % 4)]
        return {str(self.tree(depth + 1))[:6]: self.tree(depth + 1) for _ in range(self.byte() % 4)}


def mutate(base: bytes, script: Script) -> bytes:
    """1-4 byte edits, then maybe a cut and a short tail."""
    data = bytearray(base)
    for _ in range(1 + script.byte() % 4):
        data[script.int(len(data))] = script.byte()
    cut = script.int(len(data) + 1) if script.byte() & 1 else len(data)
    return bytes(data[: max(1, cut)]) + script.bytes(script.byte() % 5)


_FIELD_NAMES = sorted({f for s in SCHEMAS.values() for f in s})
_SCRIPT = st.binary(min_size=1000, max_size=2000)


def run_scripts(examples: int, per_script, minimum: int) -> int:
    """Feed the decoder from `examples` scripts; `per_script(script)` returns inputs fed."""
    fed = [0]

    @fuzz(examples)
    @given(_SCRIPT)
    def run(data):
        script = Script(data)
        while script.pos < len(script.data):
            fed[0] += per_script(script)

    run()
    print(f"{fed[0]} inputs")
    assert fed[0] >= minimum, fed[0]
    return fed[0]


def test_mutated_valid_messages_raise_only_protocol_error():
    ok = [0]

    def one(script):
        ok[0] += feed(mutate(BASES[script.byte() % len(BASES)], script))
        return 1

    fed = run_scripts(500, one, SHARES["mutations"])
    assert 0 < ok[0] < fed  # some mutations stay valid (a changed text), most do not


def test_random_bytes_raise_only_protocol_error():
    def one(script):
        data = script.bytes(script.byte() % 40)
        feed(data)
        feed(BASES[script.byte() % len(BASES)][:12] + data)  # behind a real envelope prefix: walks deeper
        return 2

    run_scripts(170, one, SHARES["random_bytes"])


def test_random_msgpack_trees_raise_only_protocol_error():
    def one(script):
        tree = script.tree()
        feed(msgpack.packb(tree))
        kind = sorted(SCHEMAS)[script.byte() % len(SCHEMAS)]
        feed(msgpack.packb({"kind": kind, "proto": PROTO, "sender": "x", "seq": 0, "payload": tree}))
        return 2

    run_scripts(90, one, SHARES["trees"])


def test_valid_messages_with_a_wrong_field_raise_only_protocol_error():
    kinds = sorted(SCHEMAS)
    messages = {kind: make(kind, "x", 0, **valid(kind)) for kind in kinds}

    def one(script):
        msg = dict(messages[kinds[script.byte() % len(kinds)]])
        msg[_FIELD_NAMES[script.byte() % len(_FIELD_NAMES)]] = script.tree()
        feed(pack(msg))
        return 1

    run_scripts(140, one, SHARES["fields"])
    assert sum(SHARES.values()) >= TOTAL_REQUIRED


def _peak_of(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(data: bytes, code: str) -> None:
    try:
        unpack(data)
    except ProtocolError as exc:
        assert exc.code == code, exc
        return
    raise AssertionError("accepted")


def test_oversize_message_is_refused_before_decoding():
    data = b"\x91" + b"\xc0" * MAX_MESSAGE_BYTES  # one byte over the limit, otherwise valid msgpack
    peak = _peak_of(lambda: _refused(data, "too_large"))
    assert peak < 1 << 20, f"refusing took {peak} bytes: the message was decoded"


def test_peak_memory_stays_under_twice_the_limit():
    """The worst inputs near the limit: big arrays, one huge string, and object bombs
    (dicts and nested lists) that msgpack would otherwise expand 40x."""
    big = np.zeros(MAX_ARRAY_BYTES // 4, np.float32)
    arrays = pack({"a": big, "b": big, "c": big})  # 48 MiB of arrays, decoded into 48 MiB
    text = msgpack.packb({"t": "x" * (MAX_MESSAGE_BYTES - 64)})
    dicts = msgpack.packb([{"ab": 0}] * ((MAX_MESSAGE_BYTES - 64) // 5))
    nested = b"\xdd\x00\x10\x00\x00" * 1000 + b"\xc0"  # 1000 levels each claiming 1M items
    for data, code in ((arrays, None), (text, None), (dicts, "too_complex"), (nested, "not_msgpack")):
        assert len(data) <= MAX_MESSAGE_BYTES
        peak = _peak_of((lambda d=data: unpack(d)) if code is None else (lambda d=data, c=code: _refused(d, c)))
        assert peak < 2 * MAX_MESSAGE_BYTES, f"{len(data)}-byte input peaked at {peak} bytes"
    deep_but_short = b"\x91" * 1000 + b"\xc0"
    _refused(deep_but_short, "too_complex")
    _refused(msgpack.packb([0] * (MAX_ELEMENTS + 1)), "too_complex")
