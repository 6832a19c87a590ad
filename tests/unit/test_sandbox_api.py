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


def test_machine_gives_every_kernel_limit():
    """CI runs as root with bubblewrap, libseccomp and cgroups: the full sandbox is tested."""
    h = S.hardening()
    if os.geteuid() != 0 or S.sandbox_mode() != "bwrap":
        pytest.skip("the full sandbox needs root and bubblewrap")
    assert h["complete"] and h["cgroup"] in ("v1", "v2") and h["seccomp"], h


def test_none_mode_refuses_unless_allowed(forced_mode, monkeypatch):
    forced_mode("none")
    monkeypatch.delenv("SCCA_ALLOW_UNSANDBOXED", raising=False)
    with pytest.raises(S.SandboxUnavailable, match="apt-get install bubblewrap"):
        S.run_python("print(1)")
    with pytest.raises(S.SandboxUnavailable):
        S.run_tests("def f(): return 1", "assert f() == 1")


def test_unshare_mode_is_refused_with_install_hint(forced_mode):
    forced_mode("unshare")
    with pytest.raises(S.SandboxUnavailable, match="install bubblewrap"):
        S.sandbox_mode()


def test_missing_kernel_limit_refuses_unless_accepted(monkeypatch):
    if S.sandbox_mode() != "bwrap":
        pytest.skip("bubblewrap mode only")
    monkeypatch.delenv("SCCA_ACCEPT_WEAK_SANDBOX", raising=False)
    monkeypatch.setattr(S, "_kernel_limits", lambda: (None, True))   # as on a machine without cgroups
    with pytest.raises(S.SandboxUnavailable, match="cgroup.*accept_weak_sandbox"):
        S.run_tests("def f():\n    return 1\n", "assert f() == 1\n", LIM)
    r = S.run_tests("def f():\n    return 1\n", "assert f() == 1\n", LIM, accept_weak=True)
    assert r["reward"] == 1.0 and r["hardening"] == "weak"


def test_a_program_exiting_97_is_not_a_cgroup_failure(monkeypatch):
    """Exit status 97 is the program's own; only the cgroup prefix's own failure (which
    writes its nonce) is reported as SandboxUnavailable."""
    from verifiers.sandbox_cgroup import RunCgroup

    if S.sandbox_mode() != "bwrap" or S.hardening()["cgroup"] is None:
        pytest.skip("bubblewrap with cgroups only")
    assert S.run_python("import sys\nsys.exit(97)\n", limits=LIM).returncode == 97
    assert S.run_python("import sys\nsys.stderr.write('x' * 32)\nsys.exit(97)\n", limits=LIM).returncode == 97
    real = RunCgroup.enter_argv

    def unjoinable(self):  # the real prefix, asked to join a group that does not exist
        argv = real(self)
        return [a if not a.endswith("cgroup.procs") else "/nonexistent/cgroup.procs" for a in argv]

    monkeypatch.setattr(RunCgroup, "enter_argv", unjoinable)
    with pytest.raises(S.SandboxUnavailable, match="could not enter the run's cgroup"):
        S.run_python("print(1)\n", limits=LIM)


def test_bad_forced_mode_is_an_error(forced_mode):
    forced_mode("docker")
    with pytest.raises(ValueError, match="SCCA_SANDBOX_MODE"):
        S.sandbox_mode()


def test_self_check_reports_what_ran():
    out = S.self_check()
    if not out["complete"]:
        pytest.skip(f"sandbox incomplete here: {out['missing']}")
    assert out["ran"] and out["network_blocked"] and out["userns_blocked"], out
    assert out["test_reward"] == 1.0 and out["error"] == ""


def test_run_python_io_exit_status_and_environment():
    code = ("import os, sys\ndata = sys.stdin.read()\nprint(data.upper())\n"
            "print(sorted(os.environ))\nsys.stderr.write('err')\nsys.exit(3)\n")
    r = S.run_python(code, stdin="hello sandbox", limits=LIM)
    assert r.returncode == 3 and not r.timed_out and not r.truncated
    lines = r.stdout.splitlines()
    assert lines[0] == "HELLO SANDBOX"
    assert lines[1] == str(["HOME", "LANG", "LOGNAME", "PATH", "TMPDIR", "USER"])   # nothing from the host
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


def test_codec_accepts_what_python_programmers_return():
    import collections
    import fractions
    from decimal import Decimal
    back = lambda v: R.decode_value(json.loads(json.dumps(R.encode_value(v))))  # noqa: E731
    assert back(collections.Counter("aab")) == {"a": 2, "b": 1}
    assert type(back(collections.OrderedDict(x=1))) is dict
    assert back(collections.namedtuple("P", "x y")(1, 2)) == (1, 2)
    assert back(fractions.Fraction(1, 3)) == fractions.Fraction(1, 3)
    assert back(Decimal("2.50")) == Decimal("2.5")
    assert R.values_match(back(fractions.Fraction(1, 2)), 0.5)
    assert R.values_match(0.1 + 0.2, 0.3) and not R.values_match(0.3001, 0.3)
    assert R.values_match(True, 1) and not R.values_match([1, 2], (1, 2))
    assert R.values_match([1, 2], (1, 2), loose_seq=True)
    assert not R.values_match(float("nan"), float("nan"))
    assert R.values_match({"a": [1.0, 2]}, {"a": [1, 2.0]})


def test_codec_turns_objects_into_unencodable():
    class Yes:
        def __eq__(self, other):
            return True

    for v in (Yes(), [Yes()], {"a": Yes()}, iter([1]), object):
        d = R.decode_value(R.encode_value(v))
        assert not R.values_match(d, 3) and not R.values_match(d, [3]) and not R.values_match(d, {"a": 1})
        if not isinstance(v, (list, dict)):    # a list holding an object is truthy, as in Python
            assert not R.satisfied({"op": "truthy"}, d) and not R.satisfied({"op": "ne"}, d, 4)
    assert R.encode_value(True) != R.encode_value(1)
    with pytest.raises(ValueError):
        R.decode_value(["q", 1])
    with pytest.raises(ValueError):
        R.decode_value(["l", [["i", "zz"]]])
