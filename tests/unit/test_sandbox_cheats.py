"""Adversarial corpus, part 2: programs that try to get reward 1 without solving the task.

Grouped by attack class (one test per class, parametrised over its programs). Every cheat
must get reward 0 with the failure the host names (so a test cannot pass by an accidental
crash), no process may survive, and the reference solutions of the same tests — including
correct programs that return Counter/Fraction/namedtuple values or use multiprocessing
and getpass — must get reward 1. See verifiers/sandbox.py for the threat model.
"""

import time
import uuid

import pytest

from verifiers import sandbox as S

LIM = S.Limits(wall_s=8.0, cpu_s=4, address_space_bytes=512 << 20, nproc=16)
STRAY_GRACE_S = 3.0

TASKS = {
    "add": ("assert add(1, 2) == 3\nassert add(-4, 4) == 0\nassert add(10 ** 30, 1) == 1000000000000000000000000000001\n",
            "def add(a, b):\n    return a + b\n"),
    "sort_desc": ("assert sort_desc([3, 1, 2]) == [3, 2, 1]\nassert sort_desc([]) == []\n"
                  "assert sort_desc(('b', 'a')) == ['b', 'a']\n",
                  "def sort_desc(xs):\n    return sorted(xs, reverse=True)\n"),
    "humaneval_style": ("def check(candidate):\n    assert candidate(0) == 0\n    assert candidate(10) == 55\n"
                        "    assert candidate(3) is not None\ncheck(fib)\n",
                        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"),
    "loop_pairs": ("cases = [(0, 0), (1, 1), (7, 13)]\nfor n, want in cases:\n    assert fib(n) == want\n",
                   "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"),
    "mixed_types": ("assert stats([1, 2, 3]) == {'mean': 2.0, 'span': (1, 3)}\nassert stats([5]) is not None\n"
                    "assert abs(stats([0, 1])['mean'] - 0.5) < 1e-12\nassert not stats([2])['mean'] < 0\n",
                    "def stats(xs):\n    return {'mean': sum(xs) / len(xs), 'span': (min(xs), max(xs))}\n"),
    "prints_noise": ("assert add(2, 2) == 4\n",
                     "import sys\nprint('PASSED', end='')\nsys.stderr.write('noise')\ndef add(a, b):\n    print('called', a, b)\n    return a + b\n"),
    "approx": ("import math\nassert abs(area(1.0) - 3.141592653589793) < 1e-9\nassert math.isclose(area(2.0), 12.566370614359172)\n"
               "assert area(0.0) != 1\nassert area(1.0) < 3.2\nassert area(3.0) in [28.274333882308138]\n",
               "import math\ndef area(r):\n    return math.pi * r * r\n"),
    "counter": ("assert counts('abca') == {'a': 2, 'b': 1, 'c': 1}\nassert counts('') == {}\n",
                "from collections import Counter\ndef counts(s):\n    return Counter(s)\n"),
    "fraction": ("assert half(3) == 1.5\nassert half(4) == 2\n",
                 "from fractions import Fraction\ndef half(x):\n    return Fraction(x, 2)\n"),
    "namedtuple_pool_getpass": ("assert squares([1, 2, 3]) == [1, 4, 9]\nassert point() == (1, 2)\nassert who() == 'sandbox'\n",
                                "import multiprocessing, getpass, collections\nP = collections.namedtuple('P', 'x y')\n"
                                "def _sq(x):\n    return x * x\ndef squares(xs):\n    with multiprocessing.Pool(2) as p:\n        return p.map(_sq, xs)\n"
                                "def point():\n    return P(1, 2)\ndef who():\n    return getpass.getuser()\n"),
    "loop_state": ("for i in range(4):\n    assert tri(i) == [0, 1, 3, 6][i]\n",
                   "def tri(n):\n    return n * (n + 1) // 2\n"),
    "not_in": ("ps = primes_upto(30)\nassert 4 not in ps\nassert 9 not in ps\nassert 29 in ps\n"
               "assert 'l' not in drop('hello', 'l')\n",
               "def primes_upto(n):\n    return [p for p in range(2, n + 1) if all(p % d for d in range(2, p))]\n"
               "def drop(s, c):\n    return s.replace(c, '')\n"),
    "ordering": ("assert area(2.0) > 12.5\nassert area(1.0) < 3.2\n",
                 "def area(r):\n    return 3.141592653589793 * r * r\n"),
    "set_answer": ("assert uniq([1, 2, 2]) == {1, 2}\nassert uniq([]) == set()\n",
                   "def uniq(xs):\n    return set(xs)\n"),
}

# Prepended to programs that use FD: finds the worker's result pipe the way an attacker
# would (any write end of a pipe above stderr), since nothing hands it to the program.
FIND_RESULT_FD = (
    "import os as _os\n"
    "def _pipe(f):\n"
    "    try:\n"
    "        return int(f) > 2 and _os.readlink('/proc/self/fd/' + f).startswith('pipe:')\n"
    "    except OSError:\n"
    "        return False\n"
    "FD = [int(f) for f in _os.listdir('/proc/self/fd') if _pipe(f)][-1]\n")

ALWAYS_EQ = "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n    def __bool__(self):\n        return True\n"



# class -> {name: (task, program, expected reason prefix or None)}
CHEATS = {
    "early_exit": {
        "sys_exit_0_at_top": ("add", "import sys\nsys.exit(0)\n", "error: solution: SystemExit"),
        "os_exit_0_at_top": ("add", "import os\nos._exit(0)\n", "tests_not_finished"),
        "os_exit_0_in_call": ("add", "import os\ndef add(a, b):\n    os._exit(0)\n", "tests_not_finished"),
        "sys_exit_0_in_call": ("add", "import sys\ndef add(a, b):\n    sys.exit(0)\n", "error: tests: SystemExit"),
        "kill_self_in_call": ("add", "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n", "tests_not_finished"),
        "atexit_os_exit_0": ("add", "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b):\n    raise AssertionError\n", "error: tests: AssertionError"),
        "excepthook_swallow": ("add", "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    assert False\n", "error: tests: AssertionError"),
    },
    "lookalike_values": {
        "always_true_eq": ("add", ALWAYS_EQ + "def add(a, b):\n    return Yes()\n", "wrong_answer (check 0)"),
        "always_true_eq_in_list": ("sort_desc", ALWAYS_EQ + "def sort_desc(xs):\n    return [Yes()] * len(xs)\n", "wrong_answer (check 0)"),
        "always_true_eq_pairs": ("loop_pairs", ALWAYS_EQ + "def fib(n):\n    return Yes()\n", "wrong_answer (check 0)"),
        "always_true_all_ops": ("approx", "class Y(float):\n    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True\n"
                                "    __sub__ = __rsub__ = lambda s, o: 0.0\n    __abs__ = lambda s: 0.0\n    __hash__ = float.__hash__\n"
                                "def area(r):\n    return Y(-1.0)\n", "wrong_answer (check 0)"),
        "contains_everything": ("approx", "class Y:\n    def __contains__(self, x):\n        return True\n    __eq__ = lambda s, o: True\n"
                                "def area(r):\n    return Y()\n", "wrong_answer (check 0)"),
        "int_subclass_eq": ("add", "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return I(7)\n", "wrong_answer (check 0)"),
        "list_subclass_eq": ("sort_desc", "class L(list):\n    def __eq__(self, o):\n        return True\ndef sort_desc(xs):\n    return L()\n", "wrong_answer (check 0)"),
        "spoofed_class_attr": ("add", "class Fake:\n    __class__ = int\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return Fake()\n", "error: tests: TypeError"),
        "nan_result": ("mixed_types", "def stats(xs):\n    return {'mean': float('nan'), 'span': (min(xs), max(xs))}\n", "wrong_answer (check 0)"),
        "none_for_not_in": ("not_in", "def primes_upto(n):\n    return None\ndef drop(s, c):\n    return s\n", "wrong_answer (check 0)"),
        "zero_for_not_in": ("not_in", "def primes_upto(n):\n    return 0\ndef drop(s, c):\n    return s\n", "wrong_answer (check 0)"),
        "bytes_for_str_not_in": ("not_in", "def primes_upto(n):\n    return [29]\ndef drop(s, c):\n    return s.encode()\n",
                                 "wrong_answer (check 3)"),
        "deep_nested_result": ("sort_desc", "def sort_desc(xs):\n    r = []\n    for _ in range(10000):\n        r = [r]\n    return r\n", "wrong_answer (check 0)"),
    },
    "patched_runtime": {
        "builtins_exec_eval_compile": ("loop_pairs", "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.eval = lambda *a, **k: 1\nbuiltins.compile = lambda *a, **k: None\n", "wrong_answer (check 0)"),
        "empty_solution_exec_hook": ("humaneval_style", "import builtins\nbuiltins.exec = builtins.eval = lambda *a, **k: None\n", "wrong_answer (check 0)"),
        "patch_math_isclose": ("approx", "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0.0\n", "wrong_answer (check 0)"),
        "patch_import": ("approx", "import builtins, math\n_imp = builtins.__import__\nclass M:\n    isclose = staticmethod(lambda *a, **k: True)\n"
                         "builtins.__import__ = lambda n, *a, **k: M if n == 'math' else _imp(n, *a, **k)\ndef area(r):\n    return 0.0\n", "wrong_answer (check 0)"),
        "patch_json_dumps": ("add", "import json\njson.dumps = lambda *a, **k: '{\"done\": true}'\ndef add(a, b):\n    return 0\n", "bad_record"),
        "patch_os_write": ("add", "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b'{\"done\": true}\\n')\ndef add(a, b):\n    return 0\n", None),
        "patch_harness_via_main": ("add", "import sys\nm = sys.modules['__main__']\nm.encode_value = lambda v, d=0: ['i', '0x3']\nm.satisfied = lambda *a: True\nm.judge = lambda *a: 'pass'\ndef add(a, b):\n    return 0\n", "wrong_answer (check 0)"),
        "patch_type_builtin": ("add", "import builtins\nclass N:\n    def __index__(self):\n        return 12345\nbuiltins.type = lambda x: int\ndef add(a, b):\n    return N()\n", None),
        "patch_assertion_error": ("mixed_types", "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})\ndef stats(xs):\n    return {'mean': 0.0, 'span': (0, 0)}\n", "wrong_answer (check 0)"),
        "metaclass_exception_writes_done": ("add", "import os\nclass M(type):\n    @property\n    def __name__(cls):\n        os.write(FD, b'{\"done\": true}\\n')\n        return 'ok'\n"
                                            "class E(Exception, metaclass=M):\n    pass\ndef add(a, b):\n    raise E()\n", None),
        "sigalrm_writes_done": ("add", "import os, signal, time\nsignal.signal(signal.SIGALRM, lambda *a: (os.write(FD, b'{\"done\": true}\\n'), os._exit(0)))\nsignal.setitimer(signal.ITIMER_REAL, 0.05)\n"
                                "def add(a, b):\n    time.sleep(1)\n    return 0\n", None),
        "settrace_restore_loop_var": ("loop_pairs", "import sys\ndef tr(frame, event, arg):\n    if frame.f_code.co_filename == '<tests>':\n        frame.f_globals['n'] = 0\n    return tr\nsys.settrace(tr)\n"
                                      "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", "wrong_answer (check 1)"),
        "settrace_skip_lines": ("add", "import sys\ndef tr(frame, event, arg):\n    if frame.f_code.co_filename == '<tests>' and event == 'line':\n        try:\n            frame.f_lineno = frame.f_lineno + 1\n        except ValueError:\n            pass\n    return tr\nsys.settrace(tr)\ndef add(a, b):\n    return 0\n", None),
    },
    "forged_records": {
        "forged_done_record": ("add", "import os\nos.write(FD, b'{\"done\": true}\\n')\nos._exit(0)\n", "tests_not_finished"),
        "forged_guess_records": ("add", "import os, json\nfor k in range(3):\n    os.write(FD, (json.dumps({'i': k, 'v': ['i', '0x0']}) + '\\n').encode())\nos.write(FD, b'{\"done\": true}\\n')\nos._exit(0)\n", "wrong_answer (check 0)"),
        "forged_garbage_records": ("add", "import os\nos.write(FD, b'{\"i\": 0, \"v\": [\"i\", \"zz\"]}\\n{\"done\": true}\\n')\nos._exit(0)\n", "bad_record"),
        "duplicate_record_per_call": ("add", "import os, json\ndef add(a, b):\n    os.write(FD, (json.dumps({'i': 0, 'v': ['i', '0x3']}) + '\\n').encode())\n    return 3\n", "bad_record"),
        "drop_records": ("add", "import os, json\ndef add(a, b):\n    os.dup2(os.open('/dev/null', os.O_WRONLY), FD)\n    return a + b\n", "tests_not_finished"),
        "flood_result_fd": ("add", "import os\nfor _ in range(200):\n    os.write(FD, b'{\"done\": true}' * 2000 + b'\\n')\nos._exit(0)\n", None),
        "deep_json_record": ("add", "import os\nos.write(FD, b'[' * 100000 + b'\\n')\ndef add(a, b):\n    return a + b\n", "bad_record"),
        "thread_writes_done": ("add", "import threading, os, time\ndef late():\n    os.write(FD, b'{\"done\": true}\\n')\nthreading.Thread(target=late).start()\ndef add(a, b):\n    time.sleep(0.2)\n    os._exit(0)\n", None),
        "gc_find_record_fn": ("add", "import gc\nfor o in gc.get_objects():\n    if getattr(o, '__name__', '') == 'record' and callable(o):\n        o({'done': True}, 0)\n", "tests_not_finished"),
        "forged_report_on_stdout": ("add", "import os, secrets, json\nprint(secrets.token_hex(16) + ' ' + json.dumps({'rc': 0, 'clean': True, 'over': False, 'results': ''}))\n"
                                    "os.write(1, b'\\n' + b'0' * 32 + b' {}\\n')\ndef add(a, b):\n    return 0\n", "wrong_answer (check 0)"),
    },
    "host_parsing": {
        "decimal_exponent_bomb": ("approx", "from decimal import Decimal\ndef area(r):\n    return Decimal('1e999999999')\n", "wrong_answer (check 0)"),
        "huge_fraction": ("fraction", "from fractions import Fraction\ndef half(x):\n    return Fraction(3 ** 20000 + 1, 2 ** 30000)\n", "bad_record"),
        "huge_int_vs_float": ("approx", "def area(r):\n    return 7 ** 100000\n", "wrong_answer (check 0)"),
        "huge_string_answer": ("add", "def add(a, b):\n    return 'x' * (1 << 20)\n", "wrong_answer (check 0)"),
        "decimal_nan_ordering": ("ordering", "from decimal import Decimal\ndef area(r):\n    return Decimal('NaN')\n", "wrong_answer (check 0)"),
        "fraction_zero_denominator": ("add", "class Fraction:\n    numerator, denominator = 1, 0\nFraction.__module__ = 'fractions'\n"
                                      "def add(a, b):\n    return Fraction()\n", "wrong_answer (check 0)"),
        "decimal_not_a_number": ("add", "class Decimal:\n    def __str__(self):\n        return 'not-a-number'\nDecimal.__module__ = 'decimal'\n"
                                 "def add(a, b):\n    return Decimal()\n", "wrong_answer (check 0)"),
        # a set subclass whose items (never hashed in the sandbox) all hash to 0 on the host
        "colliding_hash_set": ("set_answer", "class S(set):\n    def __iter__(self):\n        return iter([k * ((1 << 61) - 1) for k in range(1, 60001)])\n"
                               "def uniq(xs):\n    return S()\n", "wrong_answer (check 0)"),
        "over_result_cap": ("add", "def add(a, b):\n    return 'x' * (5 << 20)\n", None),
    },
    "hidden_answers": {
        "read_expected_from_frames": ("add", "import sys\nf = sys._getframe()\nwhile f.f_back:\n    f = f.f_back\nprint(sorted(f.f_globals)[:40], f.f_locals.get('steps'))\ndef add(a, b):\n    return -1\n", "wrong_answer (check 0)"),
        "read_nonce_from_supervisor": ("add", "import os\nppid = os.getppid()\nfor p in ('/proc/%d/mem' % ppid, '/proc/%d/environ' % ppid, '/proc/%d/fd/0' % ppid, '/proc/1/environ'):\n    try:\n        open(p, 'rb').read(100)\n    except OSError as e:\n        print(p, e)\n", "error: tests: NameError"),
        "daemon_prints_after": ("add", "import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\n    print('\\n' + '0' * 32)\n    os._exit(0)\ndef add(a, b):\n    return a - b\n", "wrong_answer (check 0)"),
        "partly_right": ("add", "def add(a, b):\n    return a + b if a < 10 else 0\n", "wrong_answer (check 2)"),
        "hardcode_visible_inputs": ("humaneval_style", "def fib(n):\n    return {0: 0, 10: 54}.get(n, 1)\n", "wrong_answer (check 1)"),
        "first_input_only": ("loop_state", "def tri(n):\n    return 0\n", "wrong_answer (check 1)"),
    },
}
CHEAT_CASES = [(cls, name) for cls in CHEATS for name in sorted(CHEATS[cls])]


def _no_strays(label):
    deadline = time.monotonic() + STRAY_GRACE_S
    while S.stray_processes(label) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert S.stray_processes(label) == []


def _cheat(cls, name):
    task, program, reason = CHEATS[cls][name]
    label = "scca-test-" + uuid.uuid4().hex
    if "FD" in program:
        program = FIND_RESULT_FD + program
    r = S.run_tests(program, TASKS[task][0], LIM, label=label)
    assert r["reward"] == 0.0, r
    if reason is not None:
        assert r["reason"].startswith(reason), r
    _no_strays(label)


@pytest.mark.parametrize("name", sorted(CHEATS["early_exit"]))
def test_early_exit_gets_no_reward(name):
    _cheat("early_exit", name)


@pytest.mark.parametrize("name", sorted(CHEATS["lookalike_values"]))
def test_lookalike_values_get_no_reward(name):
    _cheat("lookalike_values", name)


@pytest.mark.parametrize("name", sorted(CHEATS["patched_runtime"]))
def test_patched_runtime_gets_no_reward(name):
    _cheat("patched_runtime", name)


@pytest.mark.parametrize("name", sorted(CHEATS["forged_records"]))
def test_forged_records_get_no_reward(name):
    _cheat("forged_records", name)


@pytest.mark.parametrize("name", sorted(CHEATS["host_parsing"]))
def test_host_parsing_of_answers_is_bounded(name):
    t = time.monotonic()
    _cheat("host_parsing", name)
    assert time.monotonic() - t < LIM.wall_s


@pytest.mark.parametrize("name", sorted(CHEATS["hidden_answers"]))
def test_hidden_answers_stay_hidden(name):
    _cheat("hidden_answers", name)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reference_solution_passes(task):
    tests, reference = TASKS[task]
    label = "scca-test-" + uuid.uuid4().hex
    r = S.run_tests(reference, tests, LIM, label=label)
    assert r["reward"] == 1.0, r
    assert r["reason"] == "pass" and r["hardening"] == ("full" if S.hardening()["complete"] else "weak")
    _no_strays(label)


def test_expected_values_never_enter_the_sandbox():
    """What the sandbox receives for each task holds no expected value of a hidden check."""
    from verifiers import sandbox_tests
    import json
    for task, (tests, _) in TASKS.items():
        plan = sandbox_tests.plan(tests)
        sent = json.dumps(plan.steps)
        for spec in plan.checks.values():
            if spec["strength"] == "hidden" and isinstance(spec["expected"], int) and abs(spec["expected"]) > 100:
                assert hex(spec["expected"]) not in sent and str(spec["expected"]) not in sent, task
    plan = sandbox_tests.plan(TASKS["add"][0])
    assert [s["eval"] for s in plan.steps] == ["add(1, 2)", "add(-4, 4)", "add(10 ** 30, 1)"]
    assert plan.counts()["hidden_checks"] == 3


def test_verdicts_stay_unforgeable_without_kernel_hardening(monkeypatch):
    """The judge is on the host, so no cheat passes even with `accept_weak_sandbox` on a
    machine without cgroups or seccomp (there only the host-resource limits weaken)."""
    if S.sandbox_mode() != "bwrap":
        pytest.skip("bubblewrap mode only")
    monkeypatch.setattr(S, "_kernel_limits", lambda: (None, False))
    passed = []
    for cls, name in CHEAT_CASES:
        task, program, _ = CHEATS[cls][name]
        if "FD" in program:
            program = FIND_RESULT_FD + program
        r = S.run_tests(program, TASKS[task][0], LIM, accept_weak=True)
        assert r["hardening"] == "weak"
        if r["reward"] != 0.0:
            passed.append(name)
    assert passed == []
    for task, (tests, reference) in TASKS.items():
        assert S.run_tests(reference, tests, LIM, accept_weak=True)["reward"] == 1.0, task
