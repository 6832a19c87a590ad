"""The one error type of the wire: `ProtocolError` (re-exported by `protocol.codec`).

What it does: carries a short machine-readable `code` and a message naming the problem.
What it does not do: nothing else; it lives apart so the codec and the msgpack scan can
both raise it without importing each other.
"""
from __future__ import annotations


class ProtocolError(Exception):
    """The single error raised for anything wrong on the wire.

    `code` is a short token ("too_large", "too_complex", "not_msgpack", "bad_kind",
    "bad_field", "bad_array", "bad_proto", "bad_type"); the message names the problem.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
