"""Values across the sandbox wall, and how the host compares them (stdlib only).

`encode_value` runs INSIDE the sandbox (its source is prepended to sandbox_runtime.py's):
it turns what a solution returned into type-tagged JSON data. It is untrusted code's
output by construction — a solution may patch it — so nothing depends on it being honest:
whatever it writes is simply that solution's answer. `decode_value` runs on the host and
rebuilds fresh builtin objects (strict: malformed input raises ValueError). `satisfied`
applies a check spec to a decoded answer ON THE HOST, against an expected value that never
entered the sandbox.

Comparison rules (`values_match`), Python's `==` with two stated relaxations:
  * numbers compare numerically: int/bool/Fraction pairs exactly, anything involving a
    float, Decimal or complex with `math.isclose(rel_tol, abs_tol)` (the tolerance is a
    per-task setting the verdict records); NaN equals nothing;
  * what Python programmers return for mappings and numbers is accepted: every dict
    subclass / Mapping (Counter, OrderedDict, defaultdict) arrives as a dict, int/float/
    str/list/tuple/set subclasses (namedtuple, IntEnum) as their base type, Fraction and
    Decimal as exact numbers.
list vs tuple stay different unless the expected value came from JSON (`loose_seq`).
Anything else (objects, generators, classes) arrives as "unencodable" and matches nothing,
as does a set or dict whose items share hashes (`MIN_DISTINCT_HASHES`: int and tuple hashes
are predictable, and colliding items would make building it on the host quadratic), and a
Fraction or Decimal that is not a number. Membership (`in`, `not in`) of something that
Python could not test (a non-container, a non-str in a str) fails either way, as the
TypeError would fail the test.

Does NOT: evaluate anything; trust anything the sandbox says about its own success.
"""
import json
import math

MAX_DEPTH = 64            # nesting limit of encoded values
MAX_FRACTION_HEX = 2048   # hex digits of a Fraction's numerator/denominator (gcd cost)
MAX_DECIMAL_EXP = 4000    # |exponent| above which a Decimal is compared as a float
HASH_CHECK_MIN = 64       # sets/dicts of at least this many items have their hashes checked first
MIN_DISTINCT_HASHES = 0.5 # ... and are refused (unencodable) below this share of distinct hashes
NUMERIC = ("i", "f", "q", "D", "c", "b")


class Unencodable:
    """Decoded stand-in for a value that is not data: equal to nothing, falsy."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    def __bool__(self):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return "<unencodable %s>" % self.name


def encode_value(v, depth=0):
    """Type-tagged JSON form of a returned value (subclasses become their base type)."""
    if depth > MAX_DEPTH:
        return ["?", "too_deep"]
    if v is None:
        return ["N"]
    if v is True or v is False:
        return ["b", v]
    if isinstance(v, int):
        return ["i", hex(int(v))]
    if isinstance(v, float):
        return ["f", float(v).hex()]
    if isinstance(v, str):
        return ["s", str(v)]
    if isinstance(v, (bytes, bytearray)):
        return ["B", bytes(v).hex()]
    if isinstance(v, complex):
        return ["c", v.real.hex(), v.imag.hex()]
    tag = _container_tag(v)
    if tag == "d":
        return ["d", [[encode_value(k, depth + 1), encode_value(x, depth + 1)] for k, x in v.items()]]
    if tag:
        return [tag, [encode_value(x, depth + 1) for x in v]]
    name = type(v).__name__
    if name == "Fraction" and type(v).__module__ == "fractions":
        return ["q", hex(v.numerator), hex(v.denominator)]
    if name == "Decimal" and type(v).__module__ in ("decimal", "_decimal", "_pydecimal"):
        return ["D", str(v)]
    return ["?", name if type(name) is str else "object"]


def _container_tag(v):
    import collections.abc as abc
    for base, tag in ((list, "l"), (tuple, "t"), (dict, "d"), (set, "S"), (frozenset, "F")):
        if isinstance(v, base):
            return tag
    if isinstance(v, abc.Mapping):
        return "d"
    return None


def decode_value(e, depth=0):
    """Inverse of encode_value on the host: fresh builtin objects (raises on malformed)."""
    if depth > MAX_DEPTH + 1 or type(e) is not list or not e:
        raise ValueError("malformed value")
    tag, n = e[0], len(e)
    if tag == "N":
        return None
    if tag == "b" and n == 2 and type(e[1]) is bool:
        return e[1]
    if tag == "i" and n == 2 and type(e[1]) is str:
        return int(e[1], 16)
    if tag == "f" and n == 2 and type(e[1]) is str:
        return float.fromhex(e[1])
    if tag == "c" and n == 3 and type(e[1]) is str and type(e[2]) is str:
        return complex(float.fromhex(e[1]), float.fromhex(e[2]))
    if tag == "s" and n == 2 and type(e[1]) is str:
        return e[1]
    if tag == "B" and n == 2 and type(e[1]) is str:
        return bytes.fromhex(e[1])
    if (tag == "q" and n == 3 and type(e[1]) is str and type(e[2]) is str
            and len(e[1]) + len(e[2]) <= 2 * MAX_FRACTION_HEX):
        from fractions import Fraction
        den = int(e[2], 16)
        return Fraction(int(e[1], 16), den) if den else Unencodable("Fraction")
    if tag == "D" and n == 2 and type(e[1]) is str and len(e[1]) < 4096:
        from decimal import Decimal, InvalidOperation
        try:
            return Decimal(e[1])
        except InvalidOperation:           # an object posing as a Decimal, with a str() that is not one
            return Unencodable("Decimal")
    if tag in ("l", "t", "S", "F") and n == 2 and type(e[1]) is list:
        items = [decode_value(x, depth + 1) for x in e[1]]
        if tag in ("S", "F") and not _hashes_spread(items):
            return Unencodable("colliding_hashes")
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d" and n == 2 and type(e[1]) is list:
        pairs = []
        for kv in e[1]:
            if type(kv) is not list or len(kv) != 2:
                raise ValueError("malformed value")
            pairs.append((decode_value(kv[0], depth + 1), decode_value(kv[1], depth + 1)))
        if not _hashes_spread([k for k, _ in pairs]):
            return Unencodable("colliding_hashes")
        return dict(pairs)
    if tag == "?" and n == 2:
        return Unencodable(str(e[1])[:64])
    raise ValueError("malformed value")


def _hashes_spread(keys):
    """False when many keys share a hash (building a set/dict of them would be quadratic);
    raises TypeError for an unhashable key, as building it would."""
    if len(keys) < HASH_CHECK_MIN:
        return True
    return len(set(map(hash, keys))) >= MIN_DISTINCT_HASHES * len(keys)  # hash values of hashes do not collide


def _is_number(x):
    from decimal import Decimal
    from fractions import Fraction
    return type(x) in (int, bool, float, complex, Fraction, Decimal)


def numbers_match(a, e, rel_tol, abs_tol):
    """Exact for int/bool/Fraction pairs, math.isclose otherwise; NaN matches nothing."""
    from decimal import Decimal
    from fractions import Fraction
    exact = (int, bool, Fraction)
    if type(a) in exact and type(e) in exact:
        return a == e
    if complex in (type(a), type(e)):
        a, e = complex(a), complex(e)
        return (math.isclose(a.real, e.real, rel_tol=rel_tol, abs_tol=abs_tol)
                and math.isclose(a.imag, e.imag, rel_tol=rel_tol, abs_tol=abs_tol))
    def rational(d):       # a Decimal as a Fraction, unless that would be a huge integer
        small = d.is_finite() and abs(d.as_tuple().exponent) <= MAX_DECIMAL_EXP
        return Fraction(d) if small else float(d)
    try:
        fa = a if type(a) is not Decimal else rational(a)
        fe = e if type(e) is not Decimal else rational(e)
        if type(fa) in exact and type(fe) in exact:
            return fa == fe
        return math.isclose(float(fa), float(fe), rel_tol=rel_tol, abs_tol=abs_tol)
    except (OverflowError, ValueError, TypeError):
        return False


def values_match(a, e, rel_tol=1e-9, abs_tol=0.0, loose_seq=False):
    """Does the decoded answer `a` equal the expected `e` under the module's rules?"""
    if isinstance(a, Unencodable) or isinstance(e, Unencodable):
        return False
    if _is_number(e) and _is_number(a):
        return numbers_match(a, e, rel_tol, abs_tol)
    ta, te = type(a), type(e)
    if te in (list, tuple) and (ta is te or loose_seq and ta in (list, tuple)):
        return len(a) == len(e) and all(values_match(x, y, rel_tol, abs_tol, loose_seq)
                                        for x, y in zip(a, e))
    if te is dict and ta is dict:
        if len(a) != len(e) or set(a) != set(e):
            return False
        return all(values_match(a[k], e[k], rel_tol, abs_tol, loose_seq) for k in e)
    if te in (set, frozenset) and ta in (set, frozenset):
        return a == e
    if te in (str, bytes, type(None)) and ta is te:
        return a == e
    return False


def _order(op, a, e):
    try:
        return {"lt": a < e, "le": a <= e, "gt": a > e, "ge": a >= e}[op]
    except (TypeError, ArithmeticError):   # unorderable, or a Decimal NaN (InvalidOperation)
        return False


def _member(a, container, rt, at):
    """Is `a` in `container`, under values_match; None where Python's `in` would raise
    TypeError (a non-container, a non-str in a str, an unhashable item in a set or dict)."""
    if type(container) in (str, bytes):
        return a in container if type(a) is type(container) else None
    if type(container) in (set, frozenset, dict) and type(a) in (list, dict, set):
        return None
    if type(container) in (list, tuple, set, frozenset, dict):
        return any(values_match(a, x, rt, at) for x in container)
    return None


def satisfied(spec, a, expected=None):
    """Does the decoded answer `a` meet check `spec` ({"op", "rel_tol", "abs_tol", ...})?
    `expected` is the decoded expected value (hidden checks) or None."""
    op, rt, at = spec["op"], spec.get("rel_tol", 1e-9), spec.get("abs_tol", 0.0)
    if isinstance(a, Unencodable):       # an object that is not data passes no check
        return False
    if op == "pair":                      # visible: `a` is [left, right], both from the sandbox
        return (type(a) in (list, tuple) and len(a) == 2
                and satisfied({**spec, "op": spec["pair_op"]}, a[0], a[1]))
    if op == "eq":
        return values_match(a, expected, rt, at, spec.get("loose_seq", False))
    if op == "ne":
        return not values_match(a, expected, rt, at)
    if op == "is":
        return a is expected
    if op == "isnot":
        return a is not expected
    if op in ("lt", "le", "gt", "ge"):
        return _order(op, a, expected)
    if op in ("in", "notin"):
        found = _member(a, expected, rt, at)
        return found is not None and found == (op == "in")
    if op in ("contains", "notcontains"):
        found = _member(expected, a, rt, at)
        return found is not None and found == (op == "contains")
    if op in ("type", "nottype"):         # type(a) == T / != T, T a builtin type's name
        return (type(a).__name__ == expected) == (op == "type")
    if op == "truthy":
        return bool(a)
    if op == "falsy":
        return not bool(a)
    if op == "approx":                    # abs(a - expected) < tol (or <=)
        if not (_is_number(a) and _is_number(expected)):
            return False
        try:
            d = abs(a - expected)
            return d <= spec["tol"] if spec.get("inclusive") else d < spec["tol"]
        except (TypeError, OverflowError, ArithmeticError):
            return False
    if op == "isclose":
        return _is_number(a) and _is_number(expected) and numbers_match(a, expected, rt, at)
    raise ValueError("unknown op %r" % op)


def decode_records(raw, limit):
    """Parse the worker's JSON-lines records (host side); raises ValueError if malformed."""
    out = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        if len(out) >= limit:
            raise ValueError("too many records")
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError("record is not JSON") from None
        if type(r) is not dict:
            raise ValueError("record is not an object")
        out.append(r)
    return out
