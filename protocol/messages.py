"""scca wire messages: a declarative schema per kind and a small table-driven validator.

What it does:
  * `SCHEMAS` maps each message kind to `{field: spec}`; every message also carries the
    envelope `kind`, `proto` (== `PROTO`), `sender` (str) and `seq` (int >= 0).
  * `validate(msg)` checks a decoded map against its kind's schema and returns a
    normalised copy (numpy / int scalars in float fields become Python floats, tuples
    become lists, absent nullable fields become None). Unknown or missing fields, wrong
    types, out-of-range values and bad arrays raise `ProtocolError` naming the field
    path, e.g. "rollout_group.samples[2].logprobs".
  * `rollout_group` samples get cross-field checks: one length T shared by token_ids,
    logprobs, entropy and hidden; T <= MAX_TOKENS; logprobs finite and <= LOGPROB_TOL;
    token ids >= 0; entropy and hidden finite. The shapes are checked per sample, the
    values for the whole group at once (each array kind concatenated, a few reductions in
    all); when those fail the samples are checked one by one, so the error names the first
    bad sample. `verdicts` needs len(details) == len(rewards).
  * `make` builds + validates (a bad build is a programming error and raises at once);
    `encode` = validate + pack, `decode` = unpack + validate. The transport uses these.

What it does NOT do:
  * No transport, no retries, no semantic checks that need state (duplicate ids,
    known work ids, weights versions): those belong to the hub / actors / verifiers.
  * No pydantic on this hot path: a dict of small spec objects is enough and fast.
"""
from __future__ import annotations

import math

import numpy as np

from protocol.codec import ALLOWED_DTYPES, ProtocolError, describe, pack, unpack

PROTO = 1
MAX_TOKENS = 8192  # longest completion (T) in a rollout sample
MAX_GROUP = 256  # samples per group / completions per verify job
MAX_PROMPTS = 1024  # prompts per work item, also slots per work_request
MAX_WEIGHTS_CHUNK = 8 * 1024 * 1024  # bytes of one weights_chunk
MAX_WEIGHTS_RANGE = 256 * 1024 * 1024  # bytes one weights_fetch may ask for (answered in chunks)
MAX_PROMPT_TEXT_BYTES = 64 * 1024  # UTF-8 bytes of one prompt text
MAX_PROMPT_TOKENS = 1 << 17  # token ids of one rendered prompt
MAX_IDS = 1 << 16  # ids in one ack
MAX_HIDDEN_K = 1024  # projected hidden-state width k a work message may ask for
LOGPROB_TOL = 1e-4  # logprobs may exceed 0 by this much (float rounding)
MAX_SEQ = (1 << 64) - 1  # msgpack uint64

# ----------------------------------------------------------------------------- specs


def _fail(path: str, expected: str, got: object, code: str = "bad_field") -> ProtocolError:
    return ProtocolError(code, f"{path}: expected {expected}, got {describe(got)}")


def _is_int(v: object) -> bool:
    if type(v) is int:  # the common case, decided at once
        return True
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class Spec:
    """Base: `check(value, path)` returns the normalised value or raises ProtocolError."""

    __slots__ = ()
    nullable = False

    def check(self, v: object, path: str) -> object:  # pragma: no cover - abstract
        raise NotImplementedError


class Str(Spec):
    __slots__ = ("lo", "hi", "choices", "max_bytes", "_any")

    def __init__(self, lo: int = 0, hi: int | None = None, choices: tuple[str, ...] | None = None,
                 max_bytes: int | None = None):
        self.lo, self.hi, self.choices, self.max_bytes = lo, hi, choices, max_bytes
        self._any = lo == 0 and hi is None and choices is None and max_bytes is None  # any str will do

    def check(self, v, path):
        if self._any and type(v) is str:
            return v
        if not isinstance(v, str):
            raise _fail(path, "str", v)
        if self.choices is not None and v not in self.choices:
            raise _fail(path, f"one of {list(self.choices)}", v)
        if len(v) < self.lo or (self.hi is not None and len(v) > self.hi):
            raise _fail(path, f"str of {self.lo}..{self.hi} chars", f"{len(v)} chars")
        # 4 bytes per char is the UTF-8 worst case: encode only when it could matter.
        if self.max_bytes is not None and 4 * len(v) > self.max_bytes:
            n = len(v.encode("utf-8", "surrogatepass"))
            if n > self.max_bytes:
                raise _fail(path, f"str of <= {self.max_bytes} UTF-8 bytes", f"{n} bytes")
        return str(v)


class Int(Spec):
    __slots__ = ("lo", "hi")

    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def check(self, v, path):
        if not _is_int(v):
            raise _fail(path, "int", v)
        v = int(v)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise _fail(path, f"int in [{self.lo}, {self.hi}]", v)
        return v


class Float(Spec):
    """Finite float (ints accepted and converted); optional bounds, lower one may be open."""

    __slots__ = ("lo", "hi", "lo_open")

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def check(self, v, path):
        if not (_is_int(v) or isinstance(v, (float, np.floating))):
            raise _fail(path, "float", v)
        f = float(v)
        if not math.isfinite(f):
            raise _fail(path, "finite float", v)
        lo_bad = self.lo is not None and (f <= self.lo if self.lo_open else f < self.lo)
        if lo_bad or (self.hi is not None and f > self.hi):
            lb = "(" if self.lo_open else "["
            raise _fail(path, f"float in {lb}{self.lo}, {self.hi}]", v)
        return f


class Bool(Spec):
    __slots__ = ()

    def check(self, v, path):
        if not isinstance(v, (bool, np.bool_)):
            raise _fail(path, "bool", v)
        return bool(v)


class Bin(Spec):
    """Raw bytes of at most `hi` bytes."""

    __slots__ = ("hi",)

    def __init__(self, hi: int):
        self.hi = hi

    def check(self, v, path):
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise _fail(path, "bytes", v)
        if len(v) > self.hi:
            raise _fail(path, f"<= {self.hi} bytes", f"{len(v)} bytes")
        return bytes(v)


class Opt(Spec):
    """`inner` or None; a struct field with this spec may also be absent (-> None)."""

    __slots__ = ("inner",)
    nullable = True

    def __init__(self, inner: Spec):
        self.inner = inner

    def check(self, v, path):
        return None if v is None else self.inner.check(v, path)


class ListOf(Spec):
    __slots__ = ("item", "lo", "hi")

    def __init__(self, item: Spec, lo: int = 0, hi: int | None = None):
        self.item, self.lo, self.hi = item, lo, hi

    def check(self, v, path):
        if not isinstance(v, (list, tuple)):
            raise _fail(path, "list", v)
        if len(v) < self.lo or (self.hi is not None and len(v) > self.hi):
            raise _fail(path, f"list of {self.lo}..{self.hi} items", f"{len(v)} items")
        item = self.item
        return [item.check(x, f"{path}[{i}]") for i, x in enumerate(v)]


class Arr(Spec):
    """numpy array with a dtype in `dtypes` and `ndim` dimensions (values checked by posts)."""

    __slots__ = ("dtypes", "ndim", "_kinds")

    def __init__(self, dtypes: tuple[str, ...], ndim: int):
        self.dtypes, self.ndim = dtypes, ndim
        # (kind, itemsize) is byte-order blind and much cheaper than dtype.name on the hot path
        self._kinds = frozenset((np.dtype(d).kind, np.dtype(d).itemsize) for d in dtypes)

    def check(self, v, path):
        if not isinstance(v, np.ndarray):
            raise _fail(path, f"{'|'.join(self.dtypes)} array", v, "bad_array")
        if (v.dtype.kind, v.dtype.itemsize) not in self._kinds or v.ndim != self.ndim:
            raise _fail(path, f"{'|'.join(self.dtypes)} array with ndim {self.ndim}", v, "bad_array")
        return v


_SCALARS = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)
_ANY_LEAVES = (*_SCALARS, bytes)


class FreeMap(Spec):
    """Map with str keys and free-form values: scalars only, or any msgpack-able tree."""

    __slots__ = ("scalar_only",)

    def __init__(self, scalar_only: bool):
        self.scalar_only = scalar_only

    def check(self, v, path):
        if not isinstance(v, dict):
            raise _fail(path, "map", v)
        stack = [(v, path)]
        while stack:
            node, p = stack.pop()
            if isinstance(node, dict):
                for k, x in node.items():
                    if not isinstance(k, str):
                        raise _fail(p, "str keys", k)
                    if self.scalar_only and node is v:
                        if not isinstance(x, _SCALARS):
                            raise _fail(f"{p}.{k}", "scalar or str", x)
                    else:
                        stack.append((x, f"{p}.{k}"))
            elif isinstance(node, (list, tuple)):
                stack.extend((x, f"{p}[{i}]") for i, x in enumerate(node))
            elif isinstance(node, np.ndarray):
                if node.dtype.name not in ALLOWED_DTYPES:
                    raise _fail(p, f"array dtype in {sorted(ALLOWED_DTYPES)}", node, "bad_array")
            elif not isinstance(node, _ANY_LEAVES):
                raise _fail(p, "msgpack value", node)
        return v


class Struct(Spec):
    """Map with exactly these fields (nullable ones may be absent); `post` runs cross-field checks."""

    __slots__ = ("fields", "post", "_names", "_items")

    def __init__(self, fields: dict[str, Spec], post=None):
        self.fields, self.post = fields, post
        self._names = frozenset(fields)
        self._items = tuple((name, spec, "." + name) for name, spec in fields.items())  # hot loop: no f-strings

    def check(self, v, path):
        if not isinstance(v, dict):
            raise _fail(path, "map", v)
        if not self._names.issuperset(v):
            unknown = [k for k in v if k not in self.fields]
            raise ProtocolError("bad_field", f"{path}: unknown field(s) {sorted(map(str, unknown))}")
        out = {}
        for name, spec, suffix in self._items:
            if name in v:
                out[name] = spec.check(v[name], path + suffix)
            elif spec.nullable:
                out[name] = None
            else:
                raise ProtocolError("bad_field", f"{path}.{name}: missing required field")
        if self.post is not None:
            self.post(out, path)
        return out


# ----------------------------------------------------------------------------- cross-field checks


_F16_EXP = 0x7C00  # float16 exponent bits; all set <=> inf or NaN


def _all_finite(a: np.ndarray) -> bool:
    """True when no inf/NaN in a non-empty float array (fast paths: np.isfinite on
    float16 is ~4x slower than testing the exponent bits; NaN propagates through min/max,
    whose Python floats math.isfinite tests cheaper than np.isfinite does numpy scalars)."""
    if a.dtype == np.float16:
        return not ((a.view(np.uint16) & _F16_EXP) == _F16_EXP).any()
    return math.isfinite(float(a.min())) and math.isfinite(float(a.max()))


def _check_sample(s: dict, path: str) -> None:
    """Shapes of one sample (its values: `_check_rollout`)."""
    ids, lp, ent, hid = s["token_ids"], s["logprobs"], s["entropy"], s["hidden"]
    t = ids.shape[0]  # T
    if t > MAX_TOKENS:
        raise ProtocolError("bad_array", f"{path}.token_ids: expected T <= {MAX_TOKENS}, got T={t}")
    if hid is not None and not 1 <= hid.shape[1] <= MAX_HIDDEN_K:
        raise ProtocolError("bad_array", f"{path}.hidden: expected k in [1, {MAX_HIDDEN_K}], got shape {list(hid.shape)}")
    for name, a in (("logprobs", lp), ("entropy", ent), ("hidden", hid)):
        if a is not None and a.shape[0] != t:
            raise ProtocolError("bad_array", f"{path}.{name}: expected length T={t} (token_ids), "
                                             f"got shape {list(a.shape)}")


def _check_sample_values(s: dict, path: str) -> None:
    """Values of one sample whose shapes passed `_check_sample`."""
    ids, lp, ent, hid = s["token_ids"], s["logprobs"], s["entropy"], s["hidden"]
    if ids.shape[0] == 0:
        return
    if int(ids.min()) < 0:
        raise ProtocolError("bad_array", f"{path}.token_ids: expected ids >= 0, got min {int(ids.min())}")
    if not _all_finite(lp):
        raise ProtocolError("bad_array", f"{path}.logprobs: expected finite values, got non-finite")
    if float(lp.max()) > LOGPROB_TOL:
        raise ProtocolError("bad_array", f"{path}.logprobs: expected <= 0 (tol {LOGPROB_TOL}), "
                                         f"got max {float(lp.max())}")
    # NaN/inf summaries would poison credit assignment downstream: reject them here.
    for name, a in (("entropy", ent), ("hidden", hid)):
        if a is not None and a.size and not _all_finite(a):
            raise ProtocolError("bad_array", f"{path}.{name}: expected finite values, got non-finite")


def _joined(samples: list[dict], field: str, ndim: int = 1) -> np.ndarray | None:
    """The field's values of every sample that has it, flat in one array (None: no values)."""
    parts = [a for s in samples if (a := s[field]) is not None]
    if not parts:
        return None
    out = np.concatenate(parts if ndim == 1 else [a.reshape(-1) for a in parts])
    return out if out.size else None


def _values_ok(samples: list[dict]) -> bool:
    """True iff `_check_sample_values` passes for every sample (concatenating is exact:
    int32 stays int32, float16 entropy joined with float32 becomes float32 and keeps inf/NaN)."""
    ids = _joined(samples, "token_ids")
    if ids is None:
        return True  # every T is 0: nothing to check (as per sample)
    lp = _joined(samples, "logprobs")  # same length as ids: not None
    lo, hi = float(lp.min()), float(lp.max())  # NaN propagates through both
    if int(ids.min()) < 0 or not (math.isfinite(lo) and math.isfinite(hi)) or hi > LOGPROB_TOL:
        return False
    return all(a is None or _all_finite(a) for a in (_joined(samples, "entropy"), _joined(samples, "hidden", ndim=2)))


def _check_rollout(m: dict, path: str) -> None:
    samples = m["samples"]
    if _values_ok(samples):
        return
    for i, s in enumerate(samples):
        _check_sample_values(s, f"{path}.samples[{i}]")
    raise AssertionError("the group's values failed but no sample's did")  # pragma: no cover


def _check_prompt(p: dict, path: str) -> None:
    ids = p["token_ids"]
    if ids is not None and not 1 <= ids.shape[0] <= MAX_PROMPT_TOKENS:
        raise ProtocolError("bad_array", f"{path}.token_ids: expected 1..{MAX_PROMPT_TOKENS} ids, got {ids.shape[0]}")
    if ids is not None and int(ids.min()) < 0:
        raise ProtocolError("bad_array", f"{path}.token_ids: expected ids >= 0, got min {int(ids.min())}")


def _check_verdicts(m: dict, path: str) -> None:
    if len(m["details"]) != len(m["rewards"]):
        raise ProtocolError("bad_field", f"{path}.details: expected {len(m['rewards'])} items "
                                         f"(one per reward), got {len(m['details'])}")


# ----------------------------------------------------------------------------- schema

_SAMPLE = Struct({
    "token_ids": Arr(("int32",), 1),                      # [T]
    "logprobs": Arr(("float32",), 1),                     # [T] behaviour logprobs
    "entropy": Opt(Arr(("float16", "float32"), 1)),       # [T]
    "hidden": Opt(Arr(("float16",), 2)),                  # [T, k] projected hidden states
    "finish_reason": Str(choices=("stop", "length")),
    "text": Str(),
}, post=_check_sample)

ENVELOPE: dict[str, Spec] = {
    "kind": Str(),
    "proto": Int(PROTO, PROTO),
    "sender": Str(hi=256),
    "seq": Int(0, MAX_SEQ),
}

SCHEMAS: dict[str, dict[str, Spec]] = {
    "hello": {"role": Str(choices=("actor", "verifier")), "name": Str(1, 128),
              "capabilities": FreeMap(scalar_only=True)},
    "welcome": {"run_id": Str(),
                # the learner's weights broadcast group, when it has one (protocol/weights_broadcast.py)
                "broadcast": Opt(Struct({"port": Int(1, 65535), "world_size": Int(2, 65536),
                                         "backend": Str(choices=("gloo", "nccl")),
                                         "dtype": Str(choices=("float32", "bfloat16", "float16"))})),
                "weights": Opt(Struct({"version": Int(0), "folder": Str(), "manifest_sha256": Str()}))},
    "heartbeat": {},
    "work_request": {"slots": Int(1, MAX_PROMPTS)},
    "work": {
        "work_id": Str(), "policy_version": Int(0),
        # token_ids: the prompt as the learner rendered it (protocol/prompts.py); actors generate from exactly these
        "prompts": ListOf(Struct({"id": Str(), "text": Str(max_bytes=MAX_PROMPT_TEXT_BYTES),
                                  "token_ids": Opt(Arr(("int32",), 1))}, post=_check_prompt), 1, MAX_PROMPTS),
        "group_size": Int(1, MAX_GROUP),
        "sampling": Struct({"temperature": Float(0.0), "top_p": Float(0.0, 1.0, lo_open=True),
                            "max_new_tokens": Int(1, MAX_TOKENS)}),
        "eval": Bool(),
        "hidden_k": Opt(Int(1, MAX_HIDDEN_K)),  # also send projected hidden states [T, k] (protocol.summaries)
        "urgent": Opt(Bool()),  # generate before the work already queued (a screened prompt's continuation)
    },
    "rollout_group": {"work_id": Str(), "prompt_id": Str(), "weights_version": Int(0),
                      "weights_digest": Str(), "gen_seconds": Float(0.0),
                      "samples": ListOf(_SAMPLE, 1, MAX_GROUP)},
    "verify_job": {"job_id": Str(), "task": Str(), "prompt": Str(), "meta": FreeMap(scalar_only=False),
                   "completions": ListOf(Str(), 1, MAX_GROUP)},
    "verdicts": {"job_id": Str(), "rewards": ListOf(Float(0.0, 1.0), 1, MAX_GROUP),
                 "details": ListOf(FreeMap(scalar_only=False), 1, MAX_GROUP), "verifier_version": Str()},
    "ack": {"ids": ListOf(Str(), 0, MAX_IDS)},
    "weights_published": {"version": Int(0), "folder": Str(), "manifest_sha256": Str()},
    "weights_loaded": {"version": Int(0), "digest": Str(), "canary_logprob": Float()},
    "error": {"code": Str(), "message": Str()},
    # The learner ends the run on purpose (budget spent, or stopped as stalled): peers of
    # that run exit 0. A learner that is merely gone sends nothing; peers keep reconnecting.
    "run_over": {"run_id": Str(), "reason": Str(1, 64), "message": Str(max_bytes=4096)},
    # Remote weights (DESIGN §12): an actor without the learner's filesystem pulls snapshot
    # files in chunks; `file` is a name listed in the snapshot's manifest (or manifest.json).
    "weights_fetch": {"version": Int(0), "file": Str(1, 256), "offset": Int(0), "length": Int(1, MAX_WEIGHTS_RANGE)},
    # `data` travels as a second, raw ZMQ frame (an attachment: zero-copy, see protocol/transport.py);
    # the receiving endpoint puts it into `data` as a read-only memoryview.
    "weights_chunk": {"version": Int(0), "file": Str(1, 256), "offset": Int(0), "size": Int(0),
                      "data": Opt(Bin(MAX_WEIGHTS_CHUNK))},
}
ATTACHMENTS = {"weights_chunk": ("data", MAX_WEIGHTS_CHUNK)}  # kind -> (field, max bytes) of its raw frame
_POSTS = {"verdicts": _check_verdicts, "rollout_group": _check_rollout}
_STRUCTS = {k: Struct({**ENVELOPE, **f}, post=_POSTS.get(k)) for k, f in SCHEMAS.items()}

# ----------------------------------------------------------------------------- API


def validate(msg: object) -> dict:
    """Check `msg` against its kind's schema; return the normalised message."""
    if not isinstance(msg, dict):
        raise ProtocolError("bad_kind", f"message: expected map, got {describe(msg)}")
    kind = msg.get("kind")
    if not isinstance(kind, str) or kind not in _STRUCTS:
        raise ProtocolError("bad_kind", f"kind: expected one of {sorted(_STRUCTS)}, got {describe(kind)}")
    proto = msg.get("proto")
    if not _is_int(proto) or int(proto) != PROTO:
        raise ProtocolError("bad_proto", f"{kind}.proto: expected {PROTO}, got {describe(proto)}")
    return _STRUCTS[kind].check(msg, kind)


def make(kind: str, sender: str, seq: int, **fields: object) -> dict:
    """Build a message of `kind` and validate it (raises ProtocolError on a bad build)."""
    return validate({"kind": kind, "proto": PROTO, "sender": sender, "seq": seq, **fields})


def encode(msg: dict) -> bytes:
    """Validate then pack: what the transport sends."""
    return pack(validate(msg))


def decode(data: bytes | bytearray | memoryview) -> dict:
    """Unpack then validate: what the transport receives. Raises only ProtocolError."""
    return validate(unpack(data))
