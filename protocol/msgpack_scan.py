"""A walk over msgpack bytes that counts objects and nesting without building any.

What it does: `scan(data, max_elements, max_depth, ext_type)` reads only type bytes and
length fields, skipping str/bin/ext payloads by their length, and raises `ProtocolError`
when the message holds more than `max_elements` objects (every item of every array, every
key and value of every map, the containers themselves), nests deeper than `max_depth`,
claims more items than the bytes left could hold, uses the reserved byte 0xc1, holds an
ext value of any type but `ext_type` (msgpack's timestamp, -1, included: msgpack would
decode that one itself, without the codec's ext hook), or ends early. The decoder runs it before `msgpack.unpackb`, so the objects a message can make
Python allocate are bounded by the element budget, not by how cleverly the bytes are
packed (a 5 MB message of one-entry maps would otherwise become ~200 MB of dicts).

What it does not do: it checks no types, values or array payloads (the codec and
`protocol.messages` do), and it does not look inside ext payloads (the array decoder
unpacks those under its own tight limits).
"""
from __future__ import annotations

from protocol.errors import ProtocolError

# First byte -> (kind, size): _SCALAR = `size` bytes in all; _BLOB = str/bin with a length
# field of `size` bytes; _EXT = ext with a `size`-byte length field (+1 type byte); _FIXEXT =
# fixext, a type byte and a `size`-byte payload; _ARRAY / _MAP with a `size`-byte count;
# fixarray / fixmap carry their count n in the byte itself, stored as size = -(n + 1).
_SCALAR, _BLOB, _EXT, _ARRAY, _MAP, _FIXEXT = 0, 1, 2, 3, 4, 5


def _table() -> list[tuple[int, int] | None]:
    t: list[tuple[int, int] | None] = [None] * 256
    for b in range(0x00, 0x80):
        t[b] = (_SCALAR, 1)  # positive fixint
    for b in range(0xE0, 0x100):
        t[b] = (_SCALAR, 1)  # negative fixint
    for b in range(0x80, 0x90):
        t[b] = (_MAP, -(b & 0x0F) - 1)  # fixmap: count in the byte (encoded as -(n+1))
    for b in range(0x90, 0xA0):
        t[b] = (_ARRAY, -(b & 0x0F) - 1)  # fixarray
    for b in range(0xA0, 0xC0):
        t[b] = (_SCALAR, 1 + (b & 0x1F))  # fixstr: header + payload
    t[0xC0] = t[0xC2] = t[0xC3] = (_SCALAR, 1)  # nil, false, true
    for b, n in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
        t[b] = (_BLOB, n)  # bin8/16/32, str8/16/32
    for b, n in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):
        t[b] = (_EXT, n)  # ext8/16/32
    for b, n in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9),
                 (0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        t[b] = (_SCALAR, n)  # float32/64, uint8..64, int8..64
    for b, n in ((0xD4, 1), (0xD5, 2), (0xD6, 4), (0xD7, 8), (0xD8, 16)):
        t[b] = (_FIXEXT, n)  # fixext1..16: type byte + payload
    for b, n in ((0xDC, 2), (0xDD, 4)):
        t[b] = (_ARRAY, n)
    for b, n in ((0xDE, 2), (0xDF, 4)):
        t[b] = (_MAP, n)
    return t  # 0xC1 stays None: never used


_TABLE = _table()


# First byte -> total size of a fixed-size scalar (every one is under 256 bytes), else 0.
_SKIP = bytes(e[1] if e is not None and e[0] == _SCALAR else 0 for e in _TABLE)


def _ext_code(byte: int) -> int:
    return byte - 256 if byte > 127 else byte  # the type byte is a signed int8


def _foreign_ext(byte: int) -> ProtocolError:
    code = _ext_code(byte)
    return ProtocolError("not_msgpack", f"unknown msgpack ext type {code}" + (" (timestamp)" if code == -1 else ""))


def scan(data: bytes | bytearray | memoryview, max_elements: int, max_depth: int, ext_type: int) -> int:
    """Walk one msgpack object in `data`; return the number of objects it holds.

    Raises ProtocolError("too_complex") past `max_elements` objects or `max_depth` levels,
    ProtocolError("not_msgpack") for truncated or malformed bytes or an ext value whose type
    is not `ext_type`."""
    buf = memoryview(data).cast("B")
    n = len(buf)
    pos = 0
    elements = 1  # the root
    outer: list[int] = []  # items still to read in each enclosing container
    remaining = 1  # items still to read in the current container (the root: one object)
    skip_table, table = _SKIP, _TABLE
    ext_byte = ext_type & 0xFF  # the type byte as it stands in the data (a signed int8)
    try:
        while True:
            while remaining:
                remaining -= 1
                b = buf[pos]
                skip = skip_table[b]
                if skip:  # fixed-size scalar: the hot path
                    pos += skip
                    continue
                entry = table[b]
                if entry is None:
                    raise ProtocolError("not_msgpack", f"reserved byte 0xc1 at {pos}")
                kind, size = entry
                if kind == _FIXEXT:  # then like an ext: the type byte, `size` bytes of payload
                    kind, count, pos = _EXT, size, pos + 1
                elif size < 0:  # fix container: the count is in the byte
                    count, pos = -size - 1, pos + 1
                else:
                    if pos + 1 + size > n:
                        raise ProtocolError("not_msgpack", f"message ends inside a length field at byte {pos}")
                    count = buf[pos + 1] if size == 1 else int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
                    pos += 1 + size
                if kind == _BLOB:
                    pos += count
                    continue
                if kind == _EXT:
                    if buf[pos] != ext_byte:
                        raise _foreign_ext(buf[pos])
                    pos += 1 + count
                    continue
                items = count * 2 if kind == _MAP else count
                if items > n - pos:  # every item takes at least one byte
                    raise ProtocolError("not_msgpack", f"container at byte {pos} claims {items} items, "
                                                       f"only {n - pos} bytes follow")
                elements += items
                if elements > max_elements:
                    raise ProtocolError("too_complex", f"message holds more than {max_elements} objects")
                if len(outer) >= max_depth:
                    raise ProtocolError("too_complex", f"message nests deeper than {max_depth} levels")
                outer.append(remaining)
                remaining = items
            if not outer:
                break
            remaining = outer.pop()
    except IndexError:
        raise ProtocolError("not_msgpack", f"message ends early at byte {pos}") from None
    if pos > n:
        raise ProtocolError("not_msgpack", f"message ends inside a value ({pos - n} bytes missing)")
    return elements
