"""Pure verdict logic shared by the host and the sandbox supervisor (stdlib only).

`encode_value` turns a value into exact, type-tagged JSON data (exact type checks, so
subclasses and look-alike objects become "unencodable"); `decode_value` rebuilds fresh
builtin objects from it (raising ValueError on malformed input); `satisfied` applies one
check spec to a decoded value; `judge` turns the worker's exit code and its record stream
into the supervisor's verdict string ("pass" or the first failure).

The sandbox runs this file's source followed by sandbox_runtime.py's as one `-c` script,
so this module must not import anything outside the standard library.
"""
import json

MAX_DEPTH = 64            # nesting limit of encoded values


class Unencodable:
    """Decoded stand-in for a value that is not builtin data: equal to nothing, falsy."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    def __bool__(self):
        return False

    __hash__ = object.__hash__


def encode_value(v, depth=0):
    """Type-tagged, exact JSON form of builtin data (exact type checks: no subclasses)."""
    t = type(v)
    if depth > MAX_DEPTH:
        return ["?", "too_deep"]
    if v is None:
        return ["N"]
    if t is bool:
        return ["b", v]
    if t is int:
        return ["i", hex(v)]
    if t is float:
        return ["f", v.hex()]
    if t is complex:
        return ["c", v.real.hex(), v.imag.hex()]
    if t is str:
        return ["s", v]
    if t is bytes:
        return ["B", v.hex()]
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
        return [tag, [encode_value(x, depth + 1) for x in v]]
    if t is dict:
        return ["d", [[encode_value(k, depth + 1), encode_value(x, depth + 1)] for k, x in v.items()]]
    return ["?", t.__name__ if type(t.__name__) is str else "object"]


def decode_value(e, depth=0):
    """Inverse of encode_value; builds fresh builtin objects (raises on malformed input)."""
    if depth > MAX_DEPTH + 1 or type(e) is not list or not e:
        raise ValueError("malformed value")
    tag = e[0]
    if tag == "N":
        return None
    if tag == "b" and type(e[1]) is bool:
        return e[1]
    if tag == "i":
        return int(e[1], 16)
    if tag == "f":
        return float.fromhex(e[1])
    if tag == "c":
        return complex(float.fromhex(e[1]), float.fromhex(e[2]))
    if tag == "s" and type(e[1]) is str:
        return e[1]
    if tag == "B":
        return bytes.fromhex(e[1])
    if tag in ("l", "t", "S", "F"):
        items = [decode_value(x, depth + 1) for x in e[1]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d":
        return {decode_value(k, depth + 1): decode_value(x, depth + 1) for k, x in e[1]}
    if tag == "?":
        return Unencodable(str(e[1]))
    raise ValueError("malformed value")


def satisfied(spec, value):
    """Does the decoded `value` meet the check `spec`? Only builtin objects compared."""
    op = spec["op"]
    if op == "eq":
        expected = decode_value(spec["value"])
        return not isinstance(value, Unencodable) and value == expected
    if op == "is":
        return value is decode_value(spec["value"])
    if op == "pair":      # value is the [left, right] pair, both decoded
        return not any(isinstance(x, Unencodable) for x in value) and value[0] == value[1]
    if op == "truthy":
        return not isinstance(value, Unencodable) and bool(value)
    if op == "falsy":
        return not isinstance(value, Unencodable) and not bool(value)
    raise ValueError("unknown op %r" % op)


def judge(rc, raw, checks, clean):
    """Verdict string from the worker's exit code and records; "pass" iff all hold."""
    if not clean:
        return "cleanup_failed"
    records, done, error = [], False, None
    for line in raw.split(b"\n"):
        if not line:
            continue
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            return "bad_record"
        if type(r) is not dict:
            return "bad_record"
        if r.get("done") is True:
            done = True
        elif "error" in r:
            error = str(r["error"])[:200]
        else:
            records.append(r)
    seen = set()
    for r in records:
        k = r.get("k")
        if type(k) is not int or not 0 <= k < len(checks):
            return "bad_record"
        spec = checks[k]
        try:
            value = decode_value(r.get("v"))
            if spec["op"] == "pair":
                value = [value[0], value[1]] if type(value) is list and len(value) == 2 else None
                if value is None:
                    return "bad_record"
            ok = satisfied(spec, value)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
            return "bad_record"
        if not ok:
            return "wrong_answer (check %d)" % k
        seen.add(k)
    if error is not None:
        return "error: " + error
    if rc != 0:
        return "exit_status %d" % rc
    if not done:
        return "tests_not_finished"
    missing = [k for k, s in enumerate(checks) if s["required"] and k not in seen]
    if missing:
        return "check_not_run (check %d)" % missing[0]
    return "pass"
