"""Run untrusted Python (model output) in a sandbox, and judge it against tests unforgeably.

Modes (`sandbox_mode()`, probed once, logged; force with SCCA_SANDBOX_MODE):
  "bwrap"   bubblewrap: new PID/net/IPC/UTS namespaces, --die-with-parent, --new-session,
            a root that holds only read-only /usr, /bin, /lib*, /sbin and the Python prefix
            (no /work, /home, /root, /etc), a private size-capped tmpfs /tmp, fresh /proc.
  "unshare" util-linux unshare as root (PID/net/IPC/UTS/mount namespaces, --kill-child);
            the host root stays visible but the worker runs as an unprivileged uid, and
            the world-writable /tmp, /var/tmp, /dev/shm are replaced by private tmpfs.
  "none"    neither works: `run_python` refuses (SandboxUnavailable) unless
            SCCA_ALLOW_UNSANDBOXED=1; then only rlimits and timeouts apply (same uid as
            the host, a temporary working directory, no namespaces, no filesystem guard).
Every run is a fresh process tree (sandbox_runtime.py): a trusted supervisor forks the
worker before it reads anything secret; the worker drops to rlimits (CPU, address space,
processes, file size, open files, no core), a new session, a stripped environment and,
when the supervisor is root in the init user namespace (bwrap or unshare as root), a
fresh per-run uid, so RLIMIT_NPROC binds (it does not for uid 0) and the worker can neither
signal nor inspect the supervisor (as non-root the supervisor is non-dumpable instead).
The host enforces the wall clock and the stdout/stderr caps by SIGKILLing the sandbox's
process group; the PID namespace dies with it, so no child survives (double forks too).

Anti-forgery harness (`run_tests`): the host rewrites the trusted tests (`plan_tests`):
  * `assert E == L` / `assert L == E` with L a literal  ->  `__scca_check__(k, E)`; the
    literal L never enters the sandbox's worker ("hidden expectation"), and the check
    must execute at least once;
  * `assert E is None|True|False` -> same, identity check;
  * `assert A == B` (neither literal) -> `__scca_pair__(k, A, B)`: both sides compared;
  * `assert E` / `assert not E` -> truthiness of E's value.
The worker sends each value as exact type-tagged builtin data (`encode_value`: exact
type checks, so objects with an always-true `__eq__`, int subclasses etc. become
"unencodable" and fail). The supervisor — which alone holds the nonce and the hidden
literals, is non-dumpable and runs as another uid — compares fresh builtin objects, and
after killing every other process writes the nonce as the last stdout line iff the worker
exited 0, wrote its "done" record after the last test, and every check passed. The host
grants reward 1 iff that exact nonce line is the last line, the exit status is 0 and
nothing timed out or overflowed. So exit(0)/os._exit(0) before the asserts, forged pass
lines, excepthook/atexit tricks and always-true `__eq__` all get reward 0.

What is not covered:
  * Tests whose checks are not literal-expected asserts (`assert f(x) == y` with y
    computed in the tests, `abs(a - b) < eps`, asserts in helpers called by library
    code): their result is attested by the worker, which shares an interpreter with the
    solution; a solution that attacks the harness itself (sys.settrace line jumps, writing
    a forged "done" record on the result fd) can pass those; pair and truthiness checks
    are in this class too (their expected side is visible, they need not run). Literal
    checks stay sound: passing them needs the hidden values (`hidden_checks` counts them).
  * Values in checked asserts must be builtin data (None, bool, int, float, complex, str,
    bytes, list, tuple, set, frozenset, dict); other objects fail the check.
  * Tests must not call sys.exit (e.g. unittest.main() without exit=False): any exception
    escaping the tests, SystemExit included, fails the run.
  * Memory is bounded per process (RLIMIT_AS) times the process limit; no cgroups.
  * Only the stdlib of the host's Python prefix is importable (-I -S, no site-packages).
  * Mode "unshare" leaves the host filesystem readable where file permissions allow it
    (a world-readable dataset holding expected values could be read by a determined
    program); hidden are /tmp, /var/tmp, /dev/shm and the first non-world-searchable
    ancestor of the Python prefix (e.g. /root, replaced by a tmpfs holding the prefix).
  * As non-root, the worker keeps the host uid: RLIMIT_NPROC counts all of that user's
    processes, and the supervisor is protected by being non-dumpable, not by a uid.
  * Mode "none" is best effort: a program that calls setsid() itself escapes cleanup.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from verifiers.sandbox_verdict import encode_value

log = logging.getLogger(__name__)

# The script the sandbox runs: the pure verdict code, then the supervisor/worker code.
RUNTIME_SRC = "\n".join((Path(__file__).parent / f).read_text()
                        for f in ("sandbox_verdict.py", "sandbox_runtime.py"))
WORKER_UID_BASE = 2_000_000        # per-run uids are drawn from [BASE, BASE + SPAN)
WORKER_UID_SPAN = 1_000_000
READ_CHUNK = 65536
PROBE_TIMEOUT_S = 10.0
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
MODES = ("bwrap", "unshare", "none")


class SandboxUnavailable(RuntimeError):
    """No namespace sandbox works here and unsandboxed runs were not allowed."""


@dataclasses.dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0                  # host-side wall clock, sandbox start included
    cpu_s: int = 5                        # RLIMIT_CPU per process (SIGXCPU, then SIGKILL)
    address_space_bytes: int = 1 << 30    # RLIMIT_AS per process
    nproc: int = 32                       # RLIMIT_NPROC for the worker uid
    file_size_bytes: int = 16 << 20       # RLIMIT_FSIZE
    nofile: int = 256                     # RLIMIT_NOFILE
    tmpfs_bytes: int = 64 << 20           # size of the private /tmp
    stdout_bytes: int = 1 << 20           # read at most this much, then kill
    stderr_bytes: int = 1 << 20
    result_bytes: int = 4 << 20           # cap on the worker's check records


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    truncated: bool
    mode: str


def _python() -> tuple[str, str]:
    """(real interpreter path, real prefix) used inside the sandbox."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _privileged() -> bool:
    return os.geteuid() == 0


def _bwrap_argv(limits: Limits) -> list[str]:
    exe, prefix = _python()
    a = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
         "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if not _privileged():
        a += ["--unshare-user"]
    a += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        a += ["--ro-bind-try", d, d]
    for root in {prefix, os.path.dirname(exe)}:
        if root == "/usr" or root.startswith("/usr/"):
            continue
        parts = Path(root).parts
        for i in range(2, len(parts)):
            a += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
        a += ["--ro-bind", root, root]
    a += ["--proc", "/proc", "--dev", "/dev",
          "--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
          "--chdir", "/tmp"]
    return a


def _unshare_argv(limits: Limits) -> list[str]:
    return ["unshare", "--fork", "--pid", "--mount-proc", "--net", "--ipc", "--uts",
            "--kill-child"]


def _prefix_argv(mode: str, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    if mode == "none":
        return []
    return {"bwrap": _bwrap_argv, "unshare": _unshare_argv}[mode](limits)


def _probe(mode: str) -> bool:
    argv = _prefix_argv(mode) + [_python()[0], "-I", "-S", "-c", "pass"]
    try:
        r = subprocess.run(argv, env=HOST_ENV, capture_output=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("sandbox probe %s failed: %s", mode, e)
        return False
    if r.returncode != 0:
        log.warning("sandbox probe %s failed: %s", mode, r.stderr.decode(errors="replace")[-300:])
    return r.returncode == 0


@functools.lru_cache(maxsize=None)
def sandbox_mode() -> str:
    """The strongest mode that works here: "bwrap", "unshare" or "none" (logged once)."""
    forced = os.environ.get("SCCA_SANDBOX_MODE")
    if forced:
        if forced not in MODES:
            raise ValueError(f"SCCA_SANDBOX_MODE={forced!r}; expected one of {MODES}")
        mode = forced
    elif shutil.which("bwrap") and _probe("bwrap"):
        mode = "bwrap"
    elif _privileged() and shutil.which("unshare") and _probe("unshare"):
        mode = "unshare"
    else:
        mode = "none"
    log.info("sandbox mode: %s", mode)
    return mode


def _job_base(kind: str, code: str, limits: Limits, mode: str) -> dict:
    if mode == "none" and os.environ.get("SCCA_ALLOW_UNSANDBOXED") != "1":
        raise SandboxUnavailable(
            "neither bubblewrap nor `unshare` (as root) works here; install bubblewrap, or "
            "set SCCA_ALLOW_UNSANDBOXED=1 to run model code with rlimits and timeouts only")
    uid = None
    if _privileged() and mode != "none":
        uid = WORKER_UID_BASE + secrets.randbelow(WORKER_UID_SPAN)
    return {"kind": kind, "code": code, "limits": dataclasses.asdict(limits),
            "worker_uid": uid, "pidns": mode != "none",
            "workdir": "/tmp/work" if mode != "none" else tempfile.mkdtemp(prefix="scca-sbx-"),
            "tmpfs_mounts": [p for p in ("/tmp", "/var/tmp", "/dev/shm")
                             if mode == "unshare" and os.path.isdir(p)],
            "expose": [_python()[1], os.path.dirname(_python()[0])] if mode == "unshare" else []}


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _execute(job: dict, limits: Limits, mode: str, label: str) -> RunResult:
    """Start the supervisor in `mode`, feed it `job`, collect capped output, enforce wall."""
    argv = _prefix_argv(mode, limits) + [_python()[0], "-I", "-S", "-B", "-c", RUNTIME_SRC,
                                 "supervisor", label]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=HOST_ENV, cwd="/", close_fds=True,
                         start_new_session=True)
    pending = memoryview(json.dumps(job).encode())
    out_fd, err_fd = p.stdout.fileno(), p.stderr.fileno()
    caps = {out_fd: limits.stdout_bytes, err_fd: limits.stderr_bytes}
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in caps}
    sel = selectors.DefaultSelector()
    for f in (p.stdin, p.stdout, p.stderr):
        os.set_blocking(f.fileno(), False)
    sel.register(p.stdin, selectors.EVENT_WRITE)
    sel.register(p.stdout, selectors.EVENT_READ)
    sel.register(p.stderr, selectors.EVENT_READ)
    open_reads, timed_out, truncated = 2, False, False
    try:
        while open_reads:
            left = limits.wall_s - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                f = key.fileobj
                if f is p.stdin:
                    try:
                        n = os.write(f.fileno(), pending[:READ_CHUNK])
                        pending = pending[n:]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(f)
                        f.close()
                    continue
                fd = f.fileno()
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    sel.unregister(f)
                    open_reads -= 1
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > caps[fd]:
                    del bufs[fd][caps[fd]:]
                    truncated = True
            if truncated:
                break
        if timed_out or truncated:
            _kill_group(p)
        rc = p.wait(timeout=max(0.1, limits.wall_s - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(p)
        rc = p.wait()
    finally:
        sel.close()
        for f in (p.stdin, p.stdout, p.stderr):
            if not f.closed:
                f.close()
        if mode == "none":
            shutil.rmtree(job["workdir"], ignore_errors=True)
    return RunResult(returncode=rc, stdout=bufs[out_fd].decode(errors="replace"),
                     stderr=bufs[err_fd].decode(errors="replace"), timed_out=timed_out,
                     wall_s=time.monotonic() - t0, truncated=truncated, mode=mode)


def run_python(code: str, *, stdin: str = "", limits: Limits = DEFAULT_LIMITS,
               label: str = "scca-sandbox") -> RunResult:
    """Run `code` as a fresh sandboxed Python program (`python -I -S -B`), feeding `stdin`.

    `label` is a public tag placed on the sandbox processes' command lines (tests use it
    to look for strays). The return code is the program's (128+N when signal N killed
    it inside the sandbox; negative when the host killed the sandbox: wall or output cap).
    """
    mode = sandbox_mode()
    job = _job_base("run", code, limits, mode)
    job["stdin"] = stdin
    return _execute(job, limits, mode, label)


class _Rewriter(ast.NodeTransformer):
    """Turns the asserts of trusted tests into checks whose expected values stay outside."""

    def __init__(self):
        self.checks: list[dict] = []

    def _call(self, fn: str, args: list[ast.expr], spec: dict) -> ast.Expr:
        k = len(self.checks)
        self.checks.append(spec)
        return ast.Expr(ast.Call(ast.Name(fn, ast.Load()), [ast.Constant(k)] + args, []))

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1:
            left, op, right = t.left, t.ops[0], t.comparators[0]
            if isinstance(op, ast.Eq):
                lit_l, lit_r = _literal(left), _literal(right)
                if (lit_l is _NOT) != (lit_r is _NOT):         # exactly one side literal
                    expr, lit = (left, lit_r) if lit_l is _NOT else (right, lit_l)
                    return self._call("__scca_check__", [expr], {
                        "op": "eq", "value": encode_value(lit), "required": True})
                if lit_l is _NOT:
                    return self._call("__scca_pair__", [left, right],
                                      {"op": "pair", "required": False})
            if (isinstance(op, ast.Is) and isinstance(right, ast.Constant)
                    and right.value in (None, True, False)):
                return self._call("__scca_check__", [left], {
                    "op": "is", "value": encode_value(right.value), "required": True})
            return node
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            return self._call("__scca_check__", [t.operand], {"op": "falsy", "required": False})
        return self._call("__scca_check__", [t], {"op": "truthy", "required": False})


_NOT = object()


def _literal(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT


def plan_tests(tests_code: str) -> tuple[str, list[dict]]:
    """(tests as the worker sees them, check specs the supervisor holds). Raises SyntaxError."""
    rw = _Rewriter()
    tree = ast.fix_missing_locations(rw.visit(ast.parse(tests_code)))
    return ast.unparse(tree), rw.checks


def run_tests(solution_code: str, tests_code: str, limits: Limits = DEFAULT_LIMITS,
              label: str = "scca-sandbox") -> dict:
    """Run `solution_code` then `tests_code` in the sandbox; reward 1.0 iff all tests pass.

    Returns {"reward", "reason", "mode", "hidden_checks", "checks", "returncode",
    "timed_out", "truncated", "wall_s", "stdout_tail", "stderr_tail"}. `reason` is "pass",
    "timeout", "output_limit", or the supervisor's failure line (advisory only: the reward
    depends on nothing but the nonce line, exit status and limits).
    """
    worker_tests, checks = plan_tests(tests_code)
    mode = sandbox_mode()
    nonce = secrets.token_hex(16)
    job = _job_base("tests", solution_code, limits, mode)
    job.update(nonce=nonce, tests=worker_tests, checks=checks)
    r = _execute(job, limits, mode, label)
    lines = r.stdout.rstrip("\n").split("\n")
    passed = (lines[-1] == nonce and r.returncode == 0 and not r.timed_out
              and not r.truncated)
    if passed:
        reason = "pass"
    elif r.timed_out:
        reason = "timeout"
    elif r.truncated:
        reason = "output_limit"
    elif lines[-1].startswith("scca-fail: "):
        reason = lines[-1][len("scca-fail: "):]
    else:
        reason = "no_verdict (exit status %d)" % r.returncode
    return {"reward": 1.0 if passed else 0.0, "reason": reason, "mode": r.mode,
            "hidden_checks": sum(c["op"] in ("eq", "is") for c in checks),
            "checks": len(checks), "returncode": r.returncode, "timed_out": r.timed_out,
            "truncated": r.truncated, "wall_s": r.wall_s,
            "stdout_tail": r.stdout[-500:].replace(nonce, "<nonce>"),
            "stderr_tail": r.stderr[-500:]}


def stray_processes(label: str) -> list[int]:
    """Host pids whose command line contains `label` (reads /proc; no psutil)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(d) != os.getpid() and label.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                found.append(int(d))
        except OSError:
            pass
    return found
