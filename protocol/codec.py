"""msgpack wire codec for scca: bytes <-> plain Python objects with numpy arrays.

What it does:
  * `pack(obj)` turns dicts / lists / str / bytes / numbers / None / numpy arrays into
    msgpack bytes. numpy arrays travel as msgpack ext type `ARRAY_EXT` whose payload is
    the msgpack of `[dtype_str, shape_list, raw little-endian bytes]`; numpy scalars go
    out as plain Python numbers and tuples as lists.
  * `unpack(data)` is the inverse. It is hardened against hostile input: the total size
    is checked *before* unpacking, then a walk over the bytes (`msgpack_scan.scan`) bounds
    the number of objects (`MAX_ELEMENTS`) and the nesting (`MAX_DEPTH`) and refuses ext
    types other than `ARRAY_EXT` before any object is built, so peak memory stays near the
    message size; msgpack's own length limits bound
    every container, and arrays are checked for dtype (`ALLOWED_DTYPES`), shape (non-negative ints, ndim <=
    `MAX_ARRAY_NDIM`), per-array size (`MAX_ARRAY_BYTES`) and byte length
    (== prod(shape) * itemsize). Decoded arrays are writable, native byte order. The
    common case (`_plain_array`) is recognised in one pass of cheap tests; anything else goes
    through the checks one rule at a time, which decide what is accepted and name the rule.
  * Every decoding failure raises exactly one exception type, `ProtocolError`, with a
    short machine-readable `code`.

What it does NOT do:
  * No message-level validation (kinds, fields): that is `protocol.messages`.
  * No pickle, no arbitrary object types, no ext types other than `ARRAY_EXT`
    (msgpack's built-in timestamp ext, -1, is rejected as well).
"""
from __future__ import annotations

import math
import sys

import msgpack
import numpy as np

from protocol.errors import ProtocolError
from protocol.msgpack_scan import scan

ARRAY_EXT = 1
ALLOWED_DTYPES = frozenset({"bool", "uint8", "int32", "int64", "float16", "float32"})
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # whole encoded message, checked before unpacking
MAX_ARRAY_BYTES = 16 * 1024 * 1024  # raw payload of one array
MAX_ARRAY_NDIM = 4
MAX_CONTAINER_LEN = 1 << 20  # elements in one msgpack array / map
MAX_ELEMENTS = 1 << 18  # objects in one whole message (bounds the Python objects a decode makes)
MAX_DEPTH = 32  # nesting levels of arrays / maps in one message
_LE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in ALLOWED_DTYPES}
_NATIVE_DTYPES = {name: np.dtype(name).newbyteorder("=") for name in ALLOWED_DTYPES}
_PLAIN_DTYPES = {name: dt for name, dt in _LE_DTYPES.items() if name != "bool"}  # bool bytes need a value check

# Exceptions msgpack raises on malformed input (FormatError, StackError, ExtraData and
# "incomplete input" are ValueError subclasses; UnicodeDecodeError is a ValueError too).
_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def describe(v: object, limit: int = 60) -> str:
    """Short `type: repr` for error messages (never dumps a huge value)."""
    if isinstance(v, np.ndarray):
        return f"ndarray(dtype={v.dtype.name}, shape={list(v.shape)})"
    r = repr(v)
    if len(r) > limit:
        r = r[:limit] + "..."
    return f"{type(v).__name__} {r}"


# ----------------------------------------------------------------------------- encoding

def _encode_array(arr: np.ndarray) -> msgpack.ExtType:
    name = arr.dtype.name
    if name not in ALLOWED_DTYPES:
        raise ProtocolError("bad_array", f"array dtype {name!r} not in {sorted(ALLOWED_DTYPES)}")
    if arr.ndim > MAX_ARRAY_NDIM:
        raise ProtocolError("bad_array", f"array ndim {arr.ndim} > {MAX_ARRAY_NDIM}")
    if arr.nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError("bad_array", f"array of {arr.nbytes} bytes > MAX_ARRAY_BYTES={MAX_ARRAY_BYTES}")
    le = np.ascontiguousarray(arr, dtype=_LE_DTYPES[name])
    raw = memoryview(le.reshape(-1).view(np.uint8))  # zero-copy view of the raw bytes
    payload = msgpack.packb([name, list(arr.shape), raw], use_bin_type=True)
    return msgpack.ExtType(ARRAY_EXT, payload)


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()  # np.float32 -> float, np.int64 -> int, np.bool_ -> bool
    raise ProtocolError("bad_type", f"cannot encode {describe(obj)}")


def pack(obj: object) -> bytes:
    """Encode `obj` to msgpack bytes (arrays as ext `ARRAY_EXT`)."""
    try:
        return msgpack.packb(obj, default=_default, use_bin_type=True)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("bad_type", f"cannot encode: {e}") from e


# ----------------------------------------------------------------------------- decoding

def _reject_ext(code: int, data: bytes) -> object:
    raise ProtocolError("bad_array", f"nested ext type {code} inside an array payload")


_LITTLE = sys.byteorder == "little"  # wire order == native order: the bytes can be used as they are


def _plain_array(head: object) -> np.ndarray | None:
    """The common case of a decoded array payload (a non-bool dtype, int dims >= 0 whose
    product matches the bytes, within MAX_ARRAY_BYTES, on a little-endian host) as a writable
    array over a copy of the bytes; None for anything else, which `_decode_array` then checks
    one rule at a time (and rejects with its message, or accepts: a bool array)."""
    if not (_LITTLE and type(head) is list and len(head) == 3):
        return None
    name, shape, raw = head
    if type(name) is not str or name not in _PLAIN_DTYPES or type(shape) is not list or len(shape) > MAX_ARRAY_NDIM:
        return None
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        n *= d
    dt = _PLAIN_DTYPES[name]
    if type(raw) is not bytes or len(raw) != n * dt.itemsize or len(raw) > MAX_ARRAY_BYTES:
        return None
    arr = np.frombuffer(bytearray(raw), dtype=dt)  # bytearray: the copy is writable
    return arr if len(shape) == 1 else arr.reshape(shape)


def _decode_array(data: bytes) -> np.ndarray:
    try:
        head = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_reject_ext,
            max_bin_len=MAX_MESSAGE_BYTES, max_str_len=32, max_array_len=16,  # size: below
            max_map_len=0, max_ext_len=0,
        )
    except ProtocolError:
        raise
    except _MSGPACK_ERRORS as e:
        raise ProtocolError("bad_array", f"array payload is not valid msgpack: {e}") from e
    plain = _plain_array(head)
    if plain is not None:
        return plain
    if not (isinstance(head, list) and len(head) == 3):
        raise ProtocolError("bad_array", f"array payload: expected [dtype, shape, bytes], got {describe(head)}")
    name, shape, raw = head
    if not isinstance(name, str) or name not in ALLOWED_DTYPES:
        raise ProtocolError("bad_array",
                            f"array dtype: expected one of {sorted(ALLOWED_DTYPES)}, got {describe(name)}")
    if not isinstance(shape, list) or len(shape) > MAX_ARRAY_NDIM:
        raise ProtocolError("bad_array",
                            f"array shape: expected list of <= {MAX_ARRAY_NDIM} ints, got {describe(shape)}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise ProtocolError("bad_array", f"array shape: dimensions must be ints >= 0, got {shape!r}")
    if not isinstance(raw, bytes):
        raise ProtocolError("bad_array", f"array data: expected bytes, got {describe(raw)}")
    dt = _LE_DTYPES[name]
    want = math.prod(shape) * dt.itemsize  # Python ints: no overflow
    if want > MAX_ARRAY_BYTES:
        raise ProtocolError("bad_array", f"array {name}{shape} needs {want} bytes > MAX_ARRAY_BYTES={MAX_ARRAY_BYTES}")
    if len(raw) != want:
        raise ProtocolError("bad_array", f"array {name}{shape}: expected {want} data bytes, got {len(raw)}")
    if name == "bool" and want and int(np.frombuffer(raw, dtype=np.uint8).max()) > 1:
        raise ProtocolError("bad_array", "array bool: bytes must be 0 or 1")
    # astype copies: the result is writable and in native byte order.
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(_NATIVE_DTYPES[name], copy=True)


def _ext_hook(code: int, data: bytes) -> object:
    if code != ARRAY_EXT:
        raise ProtocolError("not_msgpack", f"unknown msgpack ext type {code}")
    return _decode_array(data)


def unpack(data: bytes | bytearray | memoryview) -> object:
    """Decode msgpack bytes to Python objects. Any failure raises `ProtocolError`."""
    try:
        size = memoryview(data).nbytes
    except TypeError as e:
        raise ProtocolError("not_msgpack", f"expected bytes, got {type(data).__name__}") from e
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {size} bytes > MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    scan(data, MAX_ELEMENTS, MAX_DEPTH, ARRAY_EXT)  # count, depth, ext types: before anything is built
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_ext_hook,
            max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=MAX_MESSAGE_BYTES,  # per-array limit is enforced in _decode_array
        )
    except ProtocolError:
        raise
    except _MSGPACK_ERRORS as e:
        raise ProtocolError("not_msgpack", f"cannot unpack: {type(e).__name__}: {e}") from e
    return obj
