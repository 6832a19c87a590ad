"""Adversarial corpus, part 2: programs that try to get reward 1 without solving the task.

Every cheat must get reward 0 with the failure the harness names (so a test cannot pass by
an accidental crash), no process may survive, and the reference solutions of the same
tests must get reward 1. See verifiers/sandbox.py for the harness design.
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

# name -> (task, program, expected reason prefix)
CHEATS = {
    "sys_exit_0_at_top": ("add", "import sys\nsys.exit(0)\n", "error: solution: SystemExit"),
    "builtin_exit_0": ("add", "exit(0)\n", "error: solution: NameError"),
    "os_exit_0_at_top": ("add", "import os\nos._exit(0)\n", "tests_not_finished"),
    "os_exit_0_in_call": ("add", "import os\ndef add(a, b):\n    os._exit(0)\n", "tests_not_finished"),
    "sys_exit_0_in_call": ("add", "import sys\ndef add(a, b):\n    sys.exit(0)\n", "error: tests: SystemExit"),
    "raise_systemexit_in_call": ("add", "def add(a, b):\n    raise SystemExit(0)\n", "error: tests: SystemExit"),
    "kill_self_in_call": ("add", "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n", "exit_status -9"),
    "always_true_eq": ("add", ALWAYS_EQ + "def add(a, b):\n    return Yes()\n", "wrong_answer (check 0)"),
    "always_true_eq_in_list": ("sort_desc", ALWAYS_EQ + "def sort_desc(xs):\n    return [Yes()] * len(xs)\n", "wrong_answer (check 0)"),
    "always_true_eq_pairs": ("loop_pairs", ALWAYS_EQ + "def fib(n):\n    return Yes()\n", "wrong_answer (check 0)"),
    "int_subclass_eq": ("add", "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return I(7)\n", "wrong_answer (check 0)"),
    "list_subclass_eq": ("sort_desc", "class L(list):\n    def __eq__(self, o):\n        return True\ndef sort_desc(xs):\n    return L()\n", "wrong_answer (check 0)"),
    "spoofed_class_attr": ("add", "class Fake:\n    __class__ = int\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return Fake()\n", "wrong_answer (check 0)"),
    "patched_type_builtin": ("add", "import builtins\nclass N:\n    def __index__(self):\n        return 12345\nbuiltins.type = lambda x: int\ndef add(a, b):\n    return N()\n", "wrong_answer (check 0)"),
    "forged_pass_lines": ("add", "import secrets\nfor _ in range(100):\n    print(secrets.token_hex(16))\nprint('PASSED\\nALL TESTS PASSED\\nok')\n", "error: tests: NameError"),
    "forged_pass_in_call": ("add", "import os, secrets\ndef add(a, b):\n    print('\\n' + secrets.token_hex(16))\n    os._exit(0)\n", "tests_not_finished"),
    "forged_done_record": ("add", "import os\nos.write(FD, b'{\"done\": true}\\n')\nos._exit(0)\n", "check_not_run (check 0)"),
    "forged_guess_records": ("add", "import os, sys, json\nfd = FD\nfor k in range(3):\n    os.write(fd, (json.dumps({'k': k, 'v': ['i', '0x0']}) + '\\n').encode())\nos.write(fd, b'{\"done\": true}\\n')\nos._exit(0)\n", "wrong_answer (check 0)"),
    "forged_garbage_records": ("add", "import os, sys\nos.write(FD, b'{\"k\": 0, \"v\": [\"i\", \"zz\"]}\\n{\"done\": true}\\n')\nos._exit(0)\n", "bad_record"),
    "flood_result_fd": ("add", "import os, sys\nfd = FD\nfor _ in range(200):\n    os.write(fd, b'{\"done\": true}' * 2000 + b'\\n')\nos._exit(0)\n", "bad_record"),
    "patch_harness_via_main": ("add", "import sys\nm = sys.modules['__main__']\nm.encode_value = lambda v, d=0: ['i', '0x3']\nm.satisfied = lambda *a: True\nm.judge = lambda *a: 'pass'\ndef add(a, b):\n    return 0\n", "wrong_answer (check 1)"),
    "patch_check_during_tests": ("add", "def add(a, b):\n    g = globals()\n    g['__scca_check__'] = lambda k, v: None\n    return 3\n", "check_not_run (check 1)"),
    "gc_find_finish": ("add", "import gc\nfor o in gc.get_objects():\n    if getattr(o, '__name__', '') == 'finish' and callable(o):\n        o({'done': True}, 0)\n", "check_not_run (check 0)"),
    "subclasses_walk": ("add", "for c in ().__class__.__base__.__subclasses__():\n    if c.__name__ == '_wrap_close':\n        os = c.__init__.__globals__['sys'].modules['os']\n        os.write(1, b'\\n' + b'0' * 32 + b'\\n')\n        os._exit(0)\n", "tests_not_finished"),
    "loader_and_frames": ("add", "import sys\nsrc = __loader__ if '__loader__' in dir() else None\nf = sys._getframe()\nwhile f.f_back:\n    f = f.f_back\nprint(sorted(f.f_globals)[:40])\njob = f.f_locals.get('job', {})\nprint(job.get('tests'))\ndef add(a, b):\n    return -1\n", "wrong_answer (check 0)"),
    "read_nonce_from_supervisor": ("add", "import os, re\nppid = os.getppid()\nfor p in ('/proc/%d/mem' % ppid, '/proc/%d/environ' % ppid, '/proc/%d/fd/0' % ppid, '/proc/1/environ'):\n    try:\n        open(p, 'rb').read(100)\n    except OSError as e:\n        print(p, e)\nprint(open('/proc/%d/cmdline' % ppid, 'rb').read()[-200:])\n", "error: tests: NameError"),
    "excepthook_swallow": ("add", "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    assert False\n", "error: tests: AssertionError"),
    "atexit_os_exit_0": ("add", "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b):\n    raise AssertionError\n", "error: tests: AssertionError"),
    "settrace_skip_checks": ("add", "import sys\ndef tr(frame, event, arg):\n    if frame.f_code.co_filename == '<tests>' and event == 'line':\n        try:\n            frame.f_lineno = frame.f_lineno + 1\n        except ValueError:\n            pass\n    return tr\nsys.settrace(tr)\ndef add(a, b):\n    return 0\n", None),  # skips some checks, fails others
    "patch_assertion_error": ("mixed_types", "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})\ndef stats(xs):\n    return {'mean': 0.0, 'span': (0, 0)}\n", "wrong_answer (check 0)"),
    "thread_writes_done": ("add", "import threading, os, sys, time\nfd = FD\ndef late():\n    os.write(fd, b'{\"done\": true}\\n')\nthreading.Thread(target=late).start()\ndef add(a, b):\n    time.sleep(0.2)\n    os._exit(0)\n", "check_not_run (check 0)"),
    "daemon_prints_after": ("add", "import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\n    print('\\n' + '0' * 32)\n    os._exit(0)\ndef add(a, b):\n    return a - b\n", "wrong_answer (check 0)"),
    "deep_json_record": ("add", "import os, sys\nos.write(FD, b'[' * 100000 + b'\\n')\ndef add(a, b):\n    return a + b\n", "bad_record"),
    "deep_nested_result": ("sort_desc", "def sort_desc(xs):\n    r = []\n    for _ in range(10000):\n        r = [r]\n    return r\n", "wrong_answer (check 0)"),
    "nan_result": ("mixed_types", "def stats(xs):\n    return {'mean': float('nan'), 'span': (min(xs), max(xs))}\n", "wrong_answer (check 0)"),
    "partly_right": ("add", "def add(a, b):\n    return a + b if a < 10 else 0\n", "wrong_answer (check 2)"),
    "hardcode_visible_inputs": ("humaneval_style", "def fib(n):\n    return {0: 0, 10: 54}.get(n, 1)\n", "wrong_answer (check 1)"),
}


def _no_strays(label):
    deadline = time.monotonic() + STRAY_GRACE_S
    while S.stray_processes(label) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert S.stray_processes(label) == []


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheat_gets_no_reward(name):
    task, program, reason = CHEATS[name]
    label = "scca-test-" + uuid.uuid4().hex
    if "FD" in program:
        program = FIND_RESULT_FD + program
    r = S.run_tests(program, TASKS[task][0], LIM, label=label)
    assert r["reward"] == 0.0, r
    if reason is not None:
        assert r["reason"].startswith(reason), r
    assert "<nonce>" not in r["stdout_tail"]
    _no_strays(label)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reference_solution_passes(task):
    tests, reference = TASKS[task]
    label = "scca-test-" + uuid.uuid4().hex
    r = S.run_tests(reference, tests, LIM, label=label)
    assert r["reward"] == 1.0, r
    assert r["reason"] == "pass" and r["stdout_tail"].endswith("<nonce>\n")
    _no_strays(label)


def test_plan_hides_literal_expectations():
    worker_tests, checks = S.plan_tests(TASKS["add"][0] + "assert add(0, 0) is not None\n")
    assert "1000000000000000000000000000001" not in worker_tests
    assert worker_tests.splitlines()[:2] == ["__scca_check__(0, add(1, 2))",
                                             "__scca_check__(1, add(-4, 4))"]
    assert [c["op"] for c in checks] == ["eq", "eq", "eq"]
    assert "assert add(0, 0) is not None" in worker_tests   # not a checked form: runs as is
    _, checks = S.plan_tests(TASKS["loop_pairs"][0])
    assert [c["op"] for c in checks] == ["pair"]
    worker_tests, checks = S.plan_tests("assert 3 == add(1, 2)\nassert f() is None\nassert not g()\n")
    assert worker_tests.splitlines() == ["__scca_check__(0, add(1, 2))", "__scca_check__(1, f())",
                                         "__scca_check__(2, g())"]
    assert [(c["op"], c["required"]) for c in checks] == [("eq", True), ("is", True), ("falsy", False)]
