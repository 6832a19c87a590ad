"""protocol.codec: array ext round trips, size limits, hostile input -> ProtocolError only."""
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import (ALLOWED_DTYPES, ARRAY_EXT, MAX_ARRAY_BYTES, MAX_MESSAGE_BYTES,
                            ProtocolError, pack, unpack)


def ext_array(dtype, shape, raw) -> bytes:
    """Hand-craft the wire form of an array, bypassing pack's own checks."""
    return msgpack.packb(msgpack.ExtType(ARRAY_EXT, msgpack.packb([dtype, shape, raw], use_bin_type=True)))


def raises(code: str, data: bytes, *words: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as ei:
        unpack(data)
    assert ei.value.code == code, ei.value
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))
    return ei.value


def sample_array(dtype: str, shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = math.prod(shape)
    if dtype == "bool":
        return (rng.random(n) > 0.5).reshape(shape)
    if dtype.startswith("float"):
        return (rng.standard_normal(n) * 100).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True).reshape(shape)


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 3), (2, 3, 4, 5)])
def test_array_round_trip_every_dtype_and_shape(dtype, shape):
    a = sample_array(dtype, shape)
    b = unpack(pack({"a": a}))["a"]
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b)
    assert b.flags.writeable and b.dtype.isnative
    if b.size:
        b.reshape(-1)[0] = b.reshape(-1)[-1]  # writable for real


def test_big_endian_and_non_contiguous_inputs_decode_native():
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]  # big-endian, strided
    b = unpack(pack(a))
    assert b.dtype == np.float32 and b.dtype.isnative
    np.testing.assert_array_equal(b, [[0, 2], [4, 6], [8, 10]])
    # the raw payload is little-endian whatever the host or input order
    payload = msgpack.unpackb(msgpack.unpackb(pack(np.array([1], ">i4"))).data)
    assert payload == ["int32", [1], b"\x01\x00\x00\x00"]


def test_numpy_scalars_and_tuples_become_plain():
    out = unpack(pack({"f": np.float32(0.5), "i": np.int64(-3), "b": np.bool_(True), "h": np.float16(2),
                       "t": (1, (2, "x"))}))
    assert out == {"f": 0.5, "i": -3, "b": True, "h": 2.0, "t": [1, [2, "x"]]}
    assert type(out["f"]) is float and type(out["i"]) is int and type(out["b"]) is bool


def test_pack_refuses_disallowed_arrays_and_objects():
    with pytest.raises(ProtocolError) as ei:
        pack(np.zeros(3, np.float64))
    assert ei.value.code == "bad_array" and "float64" in str(ei.value)
    with pytest.raises(ProtocolError) as ei:
        pack(np.zeros((1,) * 5, np.float32))
    assert ei.value.code == "bad_array" and "ndim 5" in str(ei.value)
    with pytest.raises(ProtocolError) as ei:
        pack(np.zeros(MAX_ARRAY_BYTES + 1, np.uint8))
    assert ei.value.code == "bad_array" and "MAX_ARRAY_BYTES" in str(ei.value)
    with pytest.raises(ProtocolError) as ei:
        pack({"x": object()})
    assert ei.value.code == "bad_type"
    with pytest.raises(ProtocolError) as ei:
        pack(1 << 70)
    assert ei.value.code == "bad_type"


def test_message_over_limit_rejected_before_unpacking():
    # 0xc1 is never valid msgpack: had it been unpacked the code would be not_msgpack.
    big = b"\xc1" * (MAX_MESSAGE_BYTES + 1)
    raises("too_large", big, str(MAX_MESSAGE_BYTES + 1))
    raises("too_large", memoryview(big))
    raises("not_msgpack", b"\xc1" * 16)  # same bytes under the limit: unpacked, rejected


def test_array_over_max_array_bytes():
    # declared shape too big (data short): size limit is checked first
    raises("bad_array", ext_array("float32", [MAX_ARRAY_BYTES // 4 + 1], b""), "MAX_ARRAY_BYTES", "float32")
    # real payload one element over the limit, shape consistent
    n = MAX_ARRAY_BYTES // 4 + 1
    raises("bad_array", ext_array("float32", [n], bytes(4 * n)), "MAX_ARRAY_BYTES")
    # huge dims must not overflow or allocate
    raises("bad_array", ext_array("int64", [2**62, 2**62, 2**62, 2**62], b""), "MAX_ARRAY_BYTES")
    # exactly at the limit is fine
    a = unpack(ext_array("uint8", [MAX_ARRAY_BYTES], bytes(MAX_ARRAY_BYTES)))
    assert a.shape == (MAX_ARRAY_BYTES,) and a.dtype == np.uint8


def test_array_byte_length_must_match_shape():
    raises("bad_array", ext_array("float32", [2, 2], bytes(15)), "expected 16 data bytes, got 15")
    raises("bad_array", ext_array("int32", [3], bytes(16)), "expected 12 data bytes, got 16")
    raises("bad_array", ext_array("float16", [], bytes(0)), "expected 2 data bytes, got 0")


@pytest.mark.parametrize("dtype, shape, raw, words", [
    ("float64", [1], bytes(8), ["dtype", "float64"]),
    ("object", [1], bytes(8), ["dtype", "object"]),
    (3, [1], bytes(4), ["dtype"]),
    ("int32", [-1], b"", ["shape", "-1"]),
    ("int32", [True], bytes(4), ["shape"]),
    ("int32", [1.0], bytes(4), ["shape"]),
    ("int32", [1, 1, 1, 1, 1], bytes(4), ["shape", "<= 4"]),
    ("int32", 4, bytes(16), ["shape"]),
    ("int32", [4], "not bytes", ["data", "bytes"]),
    ("bool", [2], b"\x01\x02", ["bool", "0 or 1"]),
])
def test_bad_array_payloads(dtype, shape, raw, words):
    raises("bad_array", ext_array(dtype, shape, raw), *words)


def test_bad_array_payload_structure():
    raises("bad_array", msgpack.packb(msgpack.ExtType(ARRAY_EXT, msgpack.packb(["int32", [1]]))), "expected [dtype")
    raises("bad_array", msgpack.packb(msgpack.ExtType(ARRAY_EXT, b"\xc1")), "not valid msgpack")
    nested = msgpack.packb(msgpack.ExtType(ARRAY_EXT, msgpack.packb(msgpack.ExtType(ARRAY_EXT, b""))))
    raises("bad_array", nested, "nested ext")


def test_unknown_ext_types_rejected():
    raises("not_msgpack", msgpack.packb({"a": msgpack.ExtType(7, b"abc")}), "ext type 7")
    raises("not_msgpack", b"\x91\xd6\xff" + bytes(4), "ext type -1")  # [timestamp 0]
    raises("not_msgpack", msgpack.packb({"x": [1, {"y": msgpack.Timestamp(5)}]}), "timestamp")
    raises("not_msgpack", msgpack.packb([msgpack.ExtType(7, b"abcd")]), "ext type 7")  # fixext4
    raises("not_msgpack", b"\x91\xc7\x28\xfe" + b"x" * 40, "ext type -2")  # [ext8 of type -2]
    raises("not_msgpack", b"\x91\xd6", "ends early")  # a fixext cut before its type byte
    raises("bad_array", msgpack.packb(msgpack.ExtType(ARRAY_EXT, b"abcd")), "not valid msgpack")  # fixext of the array type


@pytest.mark.parametrize("data, word", [
    (b"", "ends early"),
    (b"\x92\x01", "claims 2 items"),  # truncated array
    (b"\x01\x02", "ExtraData"),  # trailing bytes
    (b"\x81\x01\x01", "map key"),  # int map key
    (b"\xa2\xff\xfe", "UnicodeDecodeError"),  # invalid utf-8 str
    (b"\xdd\xff\xff\xff\xff", "claims 4294967295 items"),  # array header claiming 4G elements
    (b"\xc4\x05ab", "ends inside a value"),  # bin8 of 5 bytes, 2 present
])
def test_malformed_msgpack(data, word):
    raises("not_msgpack", data, word)


def test_nesting_and_object_count_are_bounded_before_decoding():
    raises("too_complex", b"\x91" * 100_000 + b"\xc0", "deeper than")  # absurd nesting
    raises("too_complex", msgpack.packb([{"ab": 0}] * 300_000), "more than")  # 900k objects in 3.6 MB


def test_non_bytes_input():
    raises("not_msgpack", "a str", "str")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_protocol_error(data):
    try:
        unpack(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ALLOWED_DTYPES)), st.lists(st.integers(0, 4), max_size=5),
       st.binary(max_size=64), st.integers(0, 255), st.integers(0, 1000))
def test_fuzz_array_headers_only_protocol_error(dtype, shape, raw, byte, pos):
    data = bytearray(ext_array(dtype, shape, raw))
    data[pos % len(data)] = byte
    try:
        out = unpack(bytes(data))
    except ProtocolError:
        return
    if isinstance(out, np.ndarray):  # anything that decodes is a consistent array
        assert out.dtype.name in ALLOWED_DTYPES and out.ndim <= 4 and out.flags.writeable
        assert out.nbytes <= MAX_ARRAY_BYTES

