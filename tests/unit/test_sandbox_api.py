"""Sandbox API: mode detection and refusal, run_python, limits, value codec and the judge."""

import ast
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiers import sandbox as S
from verifiers import sandbox_verdict as R

LIM = S.Limits(wall_s=8.0, cpu_s=3, address_space_bytes=512 << 20, nproc=16,
               file_size_bytes=1 << 20)


@pytest.fixture
def forced_mode(monkeypatch):
    """Force SCCA_SANDBOX_MODE for one test; the probe cache is reset before and after."""
    def force(mode):
        monkeypatch.setenv("SCCA_SANDBOX_MODE", mode)
        S.sandbox_mode.cache_clear()
    yield force
    monkeypatch.delenv("SCCA_SANDBOX_MODE", raising=False)
    S.sandbox_mode.cache_clear()


def test_mode_is_the_strongest_available():
    mode = S.sandbox_mode()
    assert mode in S.MODES
    if shutil.which("bwrap") and not os.environ.get("SCCA_SANDBOX_MODE"):
        assert mode == "bwrap"   # .ci/run installs bubblewrap: the strong mode is tested


def test_none_mode_refuses_unless_allowed(forced_mode, monkeypatch):
    forced_mode("none")
    monkeypatch.delenv("SCCA_ALLOW_UNSANDBOXED", raising=False)
    with pytest.raises(S.SandboxUnavailable, match="bubblewrap"):
        S.run_python("print(1)")
    with pytest.raises(S.SandboxUnavailable):
        S.run_tests("def f(): return 1", "assert f() == 1")


def test_bad_forced_mode_is_an_error(forced_mode):
    forced_mode("docker")
    with pytest.raises(ValueError, match="SCCA_SANDBOX_MODE"):
        S.sandbox_mode()


def test_run_python_io_exit_status_and_environment():
    code = ("import os, sys\ndata = sys.stdin.read()\nprint(data.upper())\n"
            "print(sorted(os.environ))\nsys.stderr.write('err')\nsys.exit(3)\n")
    r = S.run_python(code, stdin="hello sandbox", limits=LIM)
    assert r.returncode == 3 and not r.timed_out and not r.truncated
    lines = r.stdout.splitlines()
    assert lines[0] == "HELLO SANDBOX"
    assert lines[1] == str(["HOME", "LANG", "PATH", "TMPDIR"])   # nothing from the host
    assert r.stderr == "err" and r.mode == S.sandbox_mode() and r.wall_s > 0


def test_rlimits_uid_and_workdir_inside():
    code = ("import os, resource as R\n"
            "print(R.getrlimit(R.RLIMIT_CPU)[0], R.getrlimit(R.RLIMIT_AS)[0],"
            " R.getrlimit(R.RLIMIT_NPROC)[0], R.getrlimit(R.RLIMIT_FSIZE)[0])\n"
            "print(os.getcwd(), os.getuid())\nopen('scratch', 'w').write('ok')\n")
    r = S.run_python(code, limits=LIM)
    assert r.returncode == 0, r
    first, second = r.stdout.splitlines()
    assert first.split() == [str(LIM.cpu_s), str(LIM.address_space_bytes), str(LIM.nproc),
                             str(LIM.file_size_bytes)]
    cwd, uid = second.split()
    if os.geteuid() == 0 and S.sandbox_mode() != "none":
        assert S.WORKER_UID_BASE <= int(uid) < S.WORKER_UID_BASE + S.WORKER_UID_SPAN
        assert cwd == "/tmp/work"


def test_read_only_root_in_bwrap_mode():
    if S.sandbox_mode() != "bwrap":
        pytest.skip("bubblewrap mode only")
    r = S.run_python("import os\nprint(sorted(os.listdir('/')))\nopen('/usr/x', 'w')\n", limits=LIM)
    assert r.returncode == 1 and ("Read-only" in r.stderr or "Permission" in r.stderr)
    listed = set(ast.literal_eval(r.stdout.splitlines()[0]))
    assert {"work", "home", "etc"}.isdisjoint(listed) and "usr" in listed


def test_limits_are_frozen_with_defaults():
    with pytest.raises(AttributeError):
        S.DEFAULT_LIMITS.wall_s = 1.0
    assert S.DEFAULT_LIMITS.nproc > 1 and S.DEFAULT_LIMITS.stdout_bytes > 0


def test_concurrent_runs_are_independent():
    tests = "assert double(21) == 42\n"
    sols = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 1\n"] * 3
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda s: S.run_tests(s, tests, LIM), sols))
    assert [r["reward"] for r in rs] == [1.0, 0.0] * 3


def test_unshare_mode_contains_the_basics(forced_mode, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("unshare mode needs root and util-linux unshare")
    forced_mode("unshare")
    (tmp_path / "s").write_text("keep")
    tmp_path.chmod(0o777)
    label = "scca-test-" + uuid.uuid4().hex
    ok = S.run_tests("def f(x):\n    return x * 2\n", "assert f(4) == 8\n", LIM, label=label)
    assert ok["reward"] == 1.0 and ok["mode"] == "unshare", ok
    bad = S.run_tests(f"import os\nopen('{tmp_path}/s', 'w').write('x')\nif os.fork() == 0:\n"
                      "    os.setsid()\n    import time\n    time.sleep(60)\n"
                      "def f(x):\n    return 2 * x\n", "assert f(4) == 8\n", LIM, label=label)
    assert bad["reward"] == 0.0 and "error: solution" in bad["reason"], bad
    assert (tmp_path / "s").read_text() == "keep"
    r = S.run_python("import glob\nprint(glob.glob('/root/*'))\n", limits=LIM, label=label)
    assert r.stdout.strip() == "[]"
    assert S.stray_processes(label) == []


builtin_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=8) | st.complex_numbers(allow_nan=False),
    lambda kids: st.lists(kids, max_size=4) | st.tuples(kids, kids)
    | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    | st.frozensets(st.integers(), max_size=3),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(builtin_data)
def test_codec_round_trips_builtin_data_exactly(v):
    e = R.encode_value(v)
    back = R.decode_value(json.loads(json.dumps(e)))
    assert back == v and type(back) is type(v)
    assert R.decode_value(R.encode_value(back)) == v   # sets: order is not canonical


def test_codec_rejects_lookalikes():
    class I(int):
        pass

    class Yes:
        def __eq__(self, other):
            return True

    for v in (I(3), Yes(), [Yes()], {"a": I(1)}):
        d = R.decode_value(R.encode_value(v))
        assert d != R.decode_value(R.encode_value(3)) and d != [3] and d != {"a": 1}
    assert R.encode_value(True) != R.encode_value(1)
    with pytest.raises(ValueError):
        R.decode_value(["q", 1])


def _rec(*records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_judge_rules():
    checks = [{"op": "eq", "value": R.encode_value(3), "required": True},
              {"op": "pair", "required": False}]
    good = _rec({"k": 0, "v": R.encode_value(3.0)}, {"k": 1, "v": ["l", [["s", "a"], ["s", "a"]]]},
                {"done": True})
    assert R.judge(0, good, checks, True) == "pass"
    assert R.judge(0, good, checks, False) == "cleanup_failed"
    assert R.judge(1, good, checks, True) == "exit_status 1"
    assert R.judge(0, _rec({"k": 1, "v": ["l", [["N"], ["N"]]]}, {"done": True}), checks,
                   True) == "check_not_run (check 0)"
    assert R.judge(0, _rec({"k": 0, "v": R.encode_value(3)}), checks, True) == "tests_not_finished"
    assert R.judge(0, _rec({"k": 0, "v": R.encode_value(4)}, {"done": True}), checks,
                   True) == "wrong_answer (check 0)"
    assert R.judge(0, _rec({"k": 7, "v": ["N"]}, {"done": True}), checks, True) == "bad_record"
    assert R.judge(0, good + b"\0OVER", checks, True) == "bad_record"
