"""protocol.messages: round trip of every kind, one failing case per rule, fuzzing."""
import copy

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import ProtocolError, pack
from protocol.messages import (LOGPROB_TOL, MAX_TOKENS, MAX_WEIGHTS_CHUNK, MAX_WEIGHTS_RANGE, PROTO, SCHEMAS, decode, encode, make,
                               validate)

RNG = np.random.default_rng(1)


def sample(t=6, k=4, entropy_dtype="float16", hidden=True, reason="stop"):
    return {
        "token_ids": RNG.integers(0, 50_000, t, dtype=np.int32),
        "logprobs": -RNG.exponential(1.0, t).astype(np.float32),
        "entropy": RNG.random(t).astype(entropy_dtype),
        "hidden": RNG.standard_normal((t, k)).astype(np.float16) if hidden else None,
        "finish_reason": reason,
        "text": "The answer is \\boxed{42}.",
    }


def valid(kind: str) -> dict:
    """Realistic fields for every kind (fresh objects each call)."""
    return {
        "hello": {"role": "actor", "name": "actor-0@host",
                  "capabilities": {"engine": "hf", "slots": 8, "gpu": False, "tok_s": 812.5, "dev": None}},
        "welcome": {"run_id": "run-2024-01", "weights": {"version": 3, "folder": "/runs/w/000003",
                                                         "manifest_sha256": "ab" * 32}},
        "heartbeat": {},
        "work_request": {"slots": 4},
        "work": {"work_id": "w-17", "policy_version": 3,
                 "prompts": [{"id": "gsm8k/12", "text": "What is 6*7?"}, {"id": "gsm8k/13", "text": "2+2?"}],
                 "group_size": 8, "sampling": {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 256},
                 "eval": False},
        "rollout_group": {"work_id": "w-17", "prompt_id": "gsm8k/12", "weights_version": 3,
                          "weights_digest": "cd" * 32, "gen_seconds": 1.25,
                          "samples": [sample(), sample(t=3, entropy_dtype="float32", hidden=False, reason="length"),
                                      sample(t=0)]},
        "verify_job": {"job_id": "j-9", "task": "math", "prompt": "What is 6*7?",
                       "meta": {"answer": "42", "tests": [{"in": "1", "out": "2"}], "tol": 1e-6},
                       "completions": ["42", "The answer is 41", ""]},
        "verdicts": {"job_id": "j-9", "rewards": [1.0, 0.0, 0.5],
                     "details": [{"first_wrong_char": None},
                                 {"first_wrong_char": 15, "mask": np.array([True, False, True]),
                                  "bytes": np.arange(4, dtype=np.uint8), "pos": np.array([1, 2], np.int64)},
                                 {"note": "empty"}],
                     "verifier_version": "math-verify 0.5"},
        "ack": {"ids": ["w-17", "w-18"]},
        "weights_published": {"version": 4, "folder": "/runs/w/000004", "manifest_sha256": "ef" * 32},
        "weights_loaded": {"version": 4, "digest": "01" * 32, "canary_logprob": -3.25},
        "error": {"code": "bad_field", "message": "work.slots: expected int"},
        "run_over": {"run_id": "run-2024-01", "reason": "completed", "message": "budget spent: 150 steps"},
        "weights_fetch": {"version": 4, "file": "model.safetensors", "offset": 8 << 20, "length": 4 << 20},
        "weights_chunk": {"version": 4, "file": "model.safetensors", "offset": 0, "size": 7_000_000,
                          "data": bytes(range(256)) * 16},
    }[kind]


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b), (a, b)


def test_every_kind_has_a_valid_example():
    assert set(SCHEMAS) == {"hello", "welcome", "heartbeat", "work_request", "work", "rollout_group",
                            "verify_job", "verdicts", "ack", "weights_published", "weights_loaded", "error",
                            "weights_fetch", "weights_chunk", "run_over"}


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_round_trip_every_kind(kind):
    msg = make(kind, "actor-0", 41, **valid(kind))
    assert msg["kind"] == kind and msg["proto"] == PROTO and msg["seq"] == 41
    back = decode(encode(msg))
    assert_same(msg, back)


def test_round_trip_carries_every_allowed_dtype():
    rg = decode(encode(make("rollout_group", "a", 0, **valid("rollout_group"))))
    vd = decode(encode(make("verdicts", "v", 0, **valid("verdicts"))))
    s0, s1 = rg["samples"][0], rg["samples"][1]
    d = vd["details"][1]
    seen = {s0["token_ids"].dtype.name, s0["logprobs"].dtype.name, s0["entropy"].dtype.name,
            s1["entropy"].dtype.name, s0["hidden"].dtype.name, d["mask"].dtype.name, d["bytes"].dtype.name,
            d["pos"].dtype.name}
    assert seen == {"int32", "float32", "float16", "bool", "uint8", "int64"}
    assert s0["hidden"].shape == (6, 4) and s1["hidden"] is None and rg["samples"][2]["token_ids"].shape == (0,)
    s0["logprobs"][0] = -9.0  # decoded arrays are writable
    assert s0["logprobs"][0] == -9.0


def test_make_normalises_scalars_tuples_and_absent_nullables():
    s = sample()
    del s["entropy"], s["hidden"]
    f = valid("rollout_group") | {"gen_seconds": np.float32(0.5), "weights_version": np.int64(2), "samples": (s,)}
    m = make("rollout_group", "a", 0, **f)
    assert type(m["gen_seconds"]) is float and type(m["weights_version"]) is int
    assert isinstance(m["samples"], list) and m["samples"][0]["entropy"] is None and m["samples"][0]["hidden"] is None
    w = valid("work")
    w["sampling"]["temperature"] = 0  # greedy: int accepted, becomes float
    assert make("work", "l", 0, **w)["sampling"]["temperature"] == 0.0
    assert type(make("work", "l", 0, **w)["sampling"]["temperature"]) is float
    assert make("work", "l", 0, **w)["hidden_k"] is None  # optional: absent means no hidden summaries
    assert make("work", "l", 0, **{**w, "hidden_k": 32})["hidden_k"] == 32


def test_logprob_tolerance_accepts_rounding():
    f = valid("rollout_group")
    f["samples"][0]["logprobs"][0] = LOGPROB_TOL / 2
    make("rollout_group", "a", 0, **f)


def test_welcome_without_weights():
    assert decode(encode(make("welcome", "l", 0, run_id="r", weights=None)))["weights"] is None


# ----------------------------------------------------------------------------- one failing case per rule

DEL = object()


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    last = keys[-1]
    if isinstance(d, list):
        d[int(last)] = value
    elif value is DEL:
        del d[last]
    else:
        d[last] = value(d[last]) if callable(value) else value


def _lp(v):
    def f(a):
        a = a.copy()
        a[0] = v
        return a
    return f


T_BIG = MAX_TOKENS + 1
CASES = [
    # (kind, path, new value, code, words that must be in the message)
    ("hello", "role", "learner", "bad_field", ["hello.role", "learner"]),
    ("hello", "name", "", "bad_field", ["hello.name"]),
    ("hello", "name", "x" * 129, "bad_field", ["hello.name", "129"]),
    ("hello", "capabilities", ["engine"], "bad_field", ["hello.capabilities", "map"]),
    ("hello", "capabilities", {"engines": ["hf"]}, "bad_field", ["hello.capabilities.engines"]),
    ("hello", "capabilities", {1: "x"}, "bad_field", ["hello.capabilities", "str keys"]),
    ("welcome", "run_id", 5, "bad_field", ["welcome.run_id", "str"]),
    ("welcome", "weights", "latest", "bad_field", ["welcome.weights", "map"]),
    ("welcome", "weights.version", -1, "bad_field", ["welcome.weights.version"]),
    ("welcome", "weights.folder", DEL, "bad_field", ["welcome.weights.folder", "missing"]),
    ("welcome", "weights.manifest_sha256", None, "bad_field", ["welcome.weights.manifest_sha256"]),
    ("heartbeat", "payload", 1, "bad_field", ["heartbeat", "unknown", "payload"]),
    ("work_request", "slots", 0, "bad_field", ["work_request.slots"]),
    ("work_request", "slots", 1025, "bad_field", ["work_request.slots", "1025"]),
    ("work_request", "slots", 2.0, "bad_field", ["work_request.slots", "int"]),
    ("work_request", "slots", True, "bad_field", ["work_request.slots", "int"]),
    ("work", "work_id", None, "bad_field", ["work.work_id"]),
    ("work", "policy_version", -1, "bad_field", ["work.policy_version"]),
    ("work", "prompts", [], "bad_field", ["work.prompts", "0 items"]),
    ("work", "prompts", [{"id": "p", "text": "t"}] * 1025, "bad_field", ["work.prompts", "1025"]),
    ("work", "prompts.0.text", "\U0001F600" * 16385, "bad_field", ["work.prompts[0].text", "65540 bytes"]),
    ("work", "prompts.0.id", DEL, "bad_field", ["work.prompts[0].id", "missing"]),
    ("work", "prompts.0.answer", "42", "bad_field", ["work.prompts[0]", "answer"]),
    ("work", "group_size", 0, "bad_field", ["work.group_size"]),
    ("work", "group_size", 257, "bad_field", ["work.group_size"]),
    ("work", "sampling.temperature", -0.1, "bad_field", ["work.sampling.temperature"]),
    ("work", "sampling.temperature", float("nan"), "bad_field", ["work.sampling.temperature", "finite"]),
    ("work", "sampling.top_p", 0.0, "bad_field", ["work.sampling.top_p", "(0.0, 1.0]"]),
    ("work", "sampling.top_p", 1.5, "bad_field", ["work.sampling.top_p"]),
    ("work", "sampling.max_new_tokens", 0, "bad_field", ["work.sampling.max_new_tokens"]),
    ("work", "sampling.max_new_tokens", 8193, "bad_field", ["work.sampling.max_new_tokens"]),
    ("work", "sampling.seed", 1, "bad_field", ["work.sampling", "seed"]),
    ("work", "eval", 1, "bad_field", ["work.eval", "bool"]),
    ("rollout_group", "weights_version", -1, "bad_field", ["rollout_group.weights_version"]),
    ("rollout_group", "weights_digest", b"cd", "bad_field", ["rollout_group.weights_digest"]),
    ("rollout_group", "gen_seconds", -1.0, "bad_field", ["rollout_group.gen_seconds"]),
    ("rollout_group", "gen_seconds", float("inf"), "bad_field", ["rollout_group.gen_seconds", "finite"]),
    ("rollout_group", "samples", [], "bad_field", ["rollout_group.samples"]),
    ("rollout_group", "samples", lambda s: s * 86, "bad_field", ["rollout_group.samples", "258"]),
    ("rollout_group", "samples.0.token_ids", lambda a: a.astype(np.int64), "bad_array",
     ["samples[0].token_ids", "int32", "int64"]),
    ("rollout_group", "samples.0.token_ids", [1, 2, 3], "bad_array", ["samples[0].token_ids"]),
    ("rollout_group", "samples.0.token_ids", lambda a: a.reshape(2, 3), "bad_array", ["samples[0].token_ids", "ndim"]),
    ("rollout_group", "samples.0.logprobs", lambda a: a.astype(np.float16), "bad_array", ["samples[0].logprobs"]),
    ("rollout_group", "samples.0.logprobs", lambda a: a[:5], "bad_array", ["samples[0].logprobs", "T=6"]),
    ("rollout_group", "samples.0.entropy", lambda a: a[:4], "bad_array", ["samples[0].entropy", "T=6"]),
    ("rollout_group", "samples.0.entropy", lambda a: a.astype(np.int32), "bad_array", ["samples[0].entropy"]),
    ("rollout_group", "samples.0.hidden", lambda a: a.astype(np.float32), "bad_array", ["samples[0].hidden"]),
    ("rollout_group", "samples.0.hidden", lambda a: a[:2], "bad_array", ["samples[0].hidden", "T=6"]),
    ("rollout_group", "samples.0.hidden", lambda a: a[:, 0], "bad_array", ["samples[0].hidden", "ndim 2"]),
    ("rollout_group", "samples.0.hidden", lambda a: a[:, :0], "bad_array", ["samples[0].hidden", "k in [1, 1024]"]),
    ("work", "hidden_k", 0, "bad_field", ["work.hidden_k"]),
    ("work", "hidden_k", 1025, "bad_field", ["work.hidden_k"]),
    ("rollout_group", "samples.1", sample(t=T_BIG, hidden=False), "bad_array", ["samples[1].token_ids", "8192"]),
    ("rollout_group", "samples.0.logprobs", _lp(np.nan), "bad_array", ["samples[0].logprobs", "finite"]),
    ("rollout_group", "samples.0.logprobs", _lp(-np.inf), "bad_array", ["samples[0].logprobs", "finite"]),
    ("rollout_group", "samples.0.logprobs", _lp(0.01), "bad_array", ["samples[0].logprobs", "<= 0"]),
    ("rollout_group", "samples.0.token_ids", _lp(-1), "bad_array", ["samples[0].token_ids", ">= 0"]),
    ("rollout_group", "samples.0.entropy", _lp(np.nan), "bad_array", ["samples[0].entropy", "finite"]),
    ("rollout_group", "samples.0.hidden", _lp(np.inf), "bad_array", ["samples[0].hidden", "finite"]),
    ("rollout_group", "samples.1.finish_reason", "eos", "bad_field", ["samples[1].finish_reason", "eos"]),
    ("rollout_group", "samples.0.text", None, "bad_field", ["samples[0].text"]),
    ("rollout_group", "samples.0.reward", 1.0, "bad_field", ["samples[0]", "reward"]),
    ("verify_job", "completions", [], "bad_field", ["verify_job.completions"]),
    ("verify_job", "completions", ["x"] * 257, "bad_field", ["verify_job.completions", "257"]),
    ("verify_job", "completions.1", 41, "bad_field", ["verify_job.completions[1]"]),
    ("verify_job", "meta", "42", "bad_field", ["verify_job.meta", "map"]),
    ("verify_job", "meta", {"tests": [{3: "x"}]}, "bad_field", ["verify_job.meta.tests[0]", "str keys"]),
    ("verify_job", "meta", {"answer": {1, 2}}, "bad_field", ["verify_job.meta.answer"]),
    ("verify_job", "meta", {"a": np.zeros(2)}, "bad_array", ["verify_job.meta.a", "float64"]),
    ("verify_job", "task", DEL, "bad_field", ["verify_job.task", "missing"]),
    ("verdicts", "rewards", [1.5, 0.0, 0.5], "bad_field", ["verdicts.rewards[0]", "[0.0, 1.0]"]),
    ("verdicts", "rewards", [1.0, -0.1, 0.5], "bad_field", ["verdicts.rewards[1]"]),
    ("verdicts", "rewards", [1.0, 0.0, float("nan")], "bad_field", ["verdicts.rewards[2]", "finite"]),
    ("verdicts", "rewards", [1.0, "0", 0.5], "bad_field", ["verdicts.rewards[1]", "float"]),
    ("verdicts", "details", lambda d: d[:2], "bad_field", ["verdicts.details", "3 items", "got 2"]),
    ("verdicts", "details.0", "ok", "bad_field", ["verdicts.details[0]", "map"]),
    ("verdicts", "verifier_version", 2, "bad_field", ["verdicts.verifier_version"]),
    ("ack", "ids", [1], "bad_field", ["ack.ids[0]", "str"]),
    ("ack", "ids", "w-17", "bad_field", ["ack.ids", "list"]),
    ("weights_published", "version", -1, "bad_field", ["weights_published.version"]),
    ("weights_published", "manifest_sha256", None, "bad_field", ["weights_published.manifest_sha256"]),
    ("weights_loaded", "canary_logprob", float("nan"), "bad_field", ["weights_loaded.canary_logprob", "finite"]),
    ("weights_loaded", "canary_logprob", "x", "bad_field", ["weights_loaded.canary_logprob"]),
    ("weights_loaded", "digest", 1, "bad_field", ["weights_loaded.digest"]),
    ("error", "code", 400, "bad_field", ["error.code"]),
    ("error", "message", DEL, "bad_field", ["error.message", "missing"]),
]


@pytest.mark.parametrize("kind, path, value, code, words", CASES,
                         ids=[f"{c[0]}.{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_validation_rule(kind, path, value, code, words):
    fields = valid(kind)
    _set(fields, path, value)
    # a bad build raises in make() ...
    with pytest.raises(ProtocolError) as ei:
        make(kind, "peer", 1, **fields)
    assert ei.value.code == code, ei.value
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))
    # ... and the same content arriving on the wire raises in decode()
    raw = {"kind": kind, "proto": PROTO, "sender": "peer", "seq": 1, **fields}
    try:
        data = pack(raw)
    except ProtocolError:
        return  # not even encodable (e.g. a set): nothing can arrive on the wire
    with pytest.raises(ProtocolError) as ei:
        decode(data)
    # non-str map keys are already refused by msgpack itself (strict_map_key)
    assert ei.value.code == ("not_msgpack" if "str keys" in words else code), ei.value


ENVELOPE_CASES = [
    ([1, 2], "bad_kind", ["message", "map"]),
    ({"proto": 1, "sender": "a", "seq": 0}, "bad_kind", ["kind"]),
    ({"kind": "bogus", "proto": 1, "sender": "a", "seq": 0}, "bad_kind", ["kind", "bogus"]),
    ({"kind": "heartbeat", "proto": 2, "sender": "a", "seq": 0}, "bad_proto", ["heartbeat.proto", "2"]),
    ({"kind": "heartbeat", "sender": "a", "seq": 0}, "bad_proto", ["heartbeat.proto"]),
    ({"kind": "heartbeat", "proto": "1", "sender": "a", "seq": 0}, "bad_proto", ["heartbeat.proto"]),
    ({"kind": "heartbeat", "proto": 1, "sender": 7, "seq": 0}, "bad_field", ["heartbeat.sender"]),
    ({"kind": "heartbeat", "proto": 1, "sender": "a" * 257, "seq": 0}, "bad_field", ["heartbeat.sender"]),
    ({"kind": "heartbeat", "proto": 1, "sender": "a", "seq": -1}, "bad_field", ["heartbeat.seq"]),
    ({"kind": "heartbeat", "proto": 1, "sender": "a", "seq": 1.0}, "bad_field", ["heartbeat.seq", "int"]),
    ({"kind": "heartbeat", "proto": 1, "sender": "a"}, "bad_field", ["heartbeat.seq", "missing"]),
    ({"kind": "ack", "proto": 1, "sender": "a", "seq": 0, "ids": [], "extra": 1, "more": 2}, "bad_field",
     ["ack", "unknown", "extra", "more"]),
]


@pytest.mark.parametrize("msg, code, words", ENVELOPE_CASES)
def test_envelope_rule(msg, code, words):
    for f in (validate, lambda m: decode(pack(m))):
        with pytest.raises(ProtocolError) as ei:
            f(msg)
        assert ei.value.code == code, ei.value
        for w in words:
            assert w in str(ei.value), (w, str(ei.value))


def test_encode_validates():
    m = make("work_request", "a", 0, slots=3)
    m["slots"] = 0
    with pytest.raises(ProtocolError) as ei:
        encode(m)
    assert ei.value.code == "bad_field" and "work_request.slots" in str(ei.value)


# ----------------------------------------------------------------------------- fuzzing

SMALL_RG = encode(make("rollout_group", "actor-1", 9, work_id="w", prompt_id="p", weights_version=1,
                       weights_digest="d", gen_seconds=0.5,
                       samples=[sample(t=8, k=4), sample(t=5, hidden=False, reason="length")]))


def _decode_or_protocol_error(data: bytes):
    try:
        out = decode(data)
    except ProtocolError:
        return None
    assert_same(out, validate(out))  # anything that decodes is a valid, stable message
    return out


def test_every_single_bit_flip_of_rollout_group():
    valid_after_flip = 0
    for bit in range(len(SMALL_RG) * 8):
        data = bytearray(SMALL_RG)
        data[bit // 8] ^= 1 << (bit % 8)
        valid_after_flip += _decode_or_protocol_error(bytes(data)) is not None
    assert 0 < valid_after_flip < len(SMALL_RG) * 8  # both branches really happen


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SMALL_RG) * 8 - 1)), min_size=1, max_size=8))
def test_fuzz_bit_flips_of_rollout_group(flips):
    data = bytearray(SMALL_RG)
    for (bit,) in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    _decode_or_protocol_error(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SMALL_RG) - 1), st.binary(max_size=16))
def test_fuzz_truncation_and_splices_of_rollout_group(cut, tail):
    assert _decode_or_protocol_error(SMALL_RG[:cut]) is None  # any truncation is detected
    _decode_or_protocol_error(SMALL_RG[:cut] + tail)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_decode(data):
    _decode_or_protocol_error(data)


_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                  st.text(max_size=8), st.binary(max_size=8))
_TREE = st.recursive(_LEAF, lambda c: st.one_of(st.lists(c, max_size=4),
                                                st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=8)
_FIELDS = sorted({f for s in SCHEMAS.values() for f in s} | {"id", "text", "samples", "token_ids"})


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SCHEMAS)), st.dictionaries(st.sampled_from(_FIELDS), _TREE, max_size=6))
def test_fuzz_structured_garbage_decode(kind, fields):
    msg = {"kind": kind, "proto": PROTO, "sender": "x", "seq": 0, **fields}
    _decode_or_protocol_error(msgpack.packb(msg))


def test_mutated_valid_message_is_independent_copy():
    f = valid("work")
    m = make("work", "l", 0, **copy.deepcopy(f))
    m["prompts"][0]["text"] = "changed"
    assert make("work", "l", 0, **f)["prompts"][0]["text"] == "What is 6*7?"


def test_weights_chunk_limits():
    too_big = {"version": 1, "file": "model.safetensors", "offset": 0, "size": 1, "data": b"x" * (MAX_WEIGHTS_CHUNK + 1)}
    with pytest.raises(ProtocolError, match="data"):
        make("weights_chunk", "learner", 0, **too_big)
    with pytest.raises(ProtocolError, match="length"):
        make("weights_fetch", "a", 0, version=1, file="m", offset=0, length=MAX_WEIGHTS_RANGE + 1)
    with pytest.raises(ProtocolError, match="data"):
        make("weights_chunk", "learner", 0, version=1, file="m", offset=0, size=1, data="not bytes")


@pytest.mark.parametrize("field, value, words", [
    ("token_ids", -1, [">= 0", "min -1"]),
    ("logprobs", np.nan, ["finite"]),
    ("logprobs", -np.inf, ["finite"]),
    ("logprobs", 0.01, ["<= 0"]),
    ("entropy", np.inf, ["finite"]),
    ("hidden", np.nan, ["finite"]),
])
def test_group_value_checks_name_the_bad_sample(field, value, words):
    """Sample values are checked for the whole group at once; a bad value in any sample of a
    large group is still rejected, naming that sample and field."""
    for bad in (0, 5, 11):
        samples = [sample(t=1 + i % 7, entropy_dtype=("float16", "float32")[i % 2], hidden=i % 3 != 0)
                   for i in range(12)]
        samples[bad]["hidden"] = RNG.standard_normal((samples[bad]["token_ids"].shape[0], 4)).astype(np.float16)
        samples[bad][field][-1] = value
        fields = {**valid("rollout_group"), "samples": samples}
        with pytest.raises(ProtocolError) as ei:
            make("rollout_group", "peer", 1, **fields)
        assert ei.value.code == "bad_array" and f"rollout_group.samples[{bad}].{field}" in str(ei.value), ei.value
        for w in words:
            assert w in str(ei.value), (w, str(ei.value))


def test_group_of_mixed_samples_round_trips():
    """Entropy in float16 and float32, with and without hidden states, empty samples: valid
    together, and decoded arrays are writable copies with the sent values."""
    samples = [sample(t=i % 5, entropy_dtype=("float16", "float32")[i % 2], hidden=i % 2 == 0) for i in range(16)]
    out = decode(encode(make("rollout_group", "peer", 1, **{**valid("rollout_group"), "samples": samples})))
    assert len(out["samples"]) == 16
    for got, sent in zip(out["samples"], samples):
        for name in ("token_ids", "logprobs", "entropy", "hidden"):
            if sent[name] is None:
                assert got[name] is None
                continue
            assert got[name].dtype == sent[name].dtype and np.array_equal(got[name], sent[name])
            assert got[name].flags.writeable
