"""Run untrusted Python (model output) in a sandbox that a reward-hacking program cannot
fool or use to hurt the host.

Threat model. The program is written by a policy optimised to get reward 1 and may try
anything: forge a verdict, exhaust host memory/CPU/processes/kernel objects, reach the
network or host files, outlive its run. What is GUARANTEED, with the machine's hardening
complete (`hardening()`: bubblewrap + a cgroup + the seccomp filter):
  * Verdicts: the expected answers never enter the sandbox. The host turns the trusted
    tests into steps (sandbox_tests.py); the sandbox returns one answer per call, in
    order, as data; the HOST compares them (sandbox_verdict.py). Nothing the program does
    inside its interpreter (patching builtins, exec/compile, json, os, sys.settrace,
    signal handlers, always-true __eq__, writing records itself) changes what is
    compared with what, so to pass a hidden check it must produce the hidden value.
    Checks whose expected side the tests compute inside the sandbox ("visible"), whose
    outcome is a fixed constant (`is None`, truthiness: "guessable"), and asserts that
    cannot be converted and run inside the sandbox ("attested") are weaker; each verdict
    counts them (`hidden_checks`, `visible_checks`, `guessable_checks`, `attested_asserts`).
  * Host resources: one cgroup per run (sandbox_cgroup.py) bounds memory — anonymous,
    memfd, tmpfs and kernel memory alike — , processes/threads and CPU time; the private
    /tmp and /dev/shm are tmpfs capped in bytes and inodes; RLIMIT_CPU/AS/NPROC/FSIZE/
    NOFILE/CORE per process; the wall clock and stdout/stderr caps are enforced by the host,
    which then kills the whole cgroup; the seccomp filter (sandbox_seccomp.py) refuses new
    namespaces (no nested user namespace), mounts, keyrings, memfd, ptrace, io_uring, bpf,
    AF_VSOCK and other exotic sockets; /dev holds only null, zero, full, random, urandom
    (no pty pool to drain).
  * Containment: bubblewrap gives new PID/net/IPC/UTS namespaces, --die-with-parent, a new
    session, a read-only root with only /usr, /bin, /lib*, /sbin and the Python prefix (no
    /etc, /home, /root, /work, no data files, no host sockets), a fresh /proc, and a
    per-run uid without capabilities and with NO_NEW_PRIVS.
What is NOT guaranteed: the strength of the tests themselves (visible / guessable /
attested checks above; weak tests stay weak; the inputs of every check are visible to
the program, so tests whose inputs reveal other checks' answers leak them; a check on a
second name for a list the solution was given sees the host's copy, not the solution's
changes: sandbox_convert.py); timing side
channels; kernel bugs reachable through the allowed syscalls; ptys (none exist); only
the stdlib of the host's Python is importable.

`self_check()` (for `scca doctor`) runs one probe program and one test and reports what
ran, the hardening, and whether the network and new user namespaces were blocked.

Modes (`sandbox_mode()`, probed once, logged; force with SCCA_SANDBOX_MODE):
  "bwrap"  the only mode with the guarantees above.
  "none"   only with SCCA_ALLOW_UNSANDBOXED=1 (development): rlimits, timeouts, a temporary
           directory; no namespaces, no filesystem or network guard. Never for training.
The former "unshare" fallback is refused (it could not hide host files, sockets or data):
install bubblewrap (`apt-get install bubblewrap`). Without a working cgroup or seccomp
filter `run_python`/`run_tests` refuse (SandboxUnavailable) unless the caller accepts
weaker limits (`accept_weak=True`, `[verifier] accept_weak_sandbox`, or
SCCA_ACCEPT_WEAK_SANDBOX=1), in which case the verdict records `hardening` = "weak".
"""
from __future__ import annotations

import base64
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

from verifiers import sandbox_tests
from verifiers.sandbox_cgroup import RunCgroup, cgroup_kind
from verifiers.sandbox_seccomp import SeccompUnavailable, filter_bpf

log = logging.getLogger(__name__)

# The script the sandbox runs: the value codec, then the supervisor/worker code.
RUNTIME_SRC = "\n".join((Path(__file__).parent / f).read_text()
                        for f in ("sandbox_verdict.py", "sandbox_runtime.py"))
WORKER_UID_BASE = 2_000_000        # per-run uids are drawn from [BASE, BASE + SPAN)
WORKER_UID_SPAN = 1_000_000
READ_CHUNK = 65536
PROBE_TIMEOUT_S = 10.0
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
MODES = ("bwrap", "none")
DEV_NODES = ("null", "zero", "full", "random", "urandom")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf "
                "install bubblewrap) and run the verifier as root or with a delegated cgroup")
REPORT_SLACK = 4096                # bytes of report framing on top of the result cap


class SandboxUnavailable(RuntimeError):
    """No sandbox with the required guarantees works here and weaker ones were not accepted."""


@dataclasses.dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0                  # host-side wall clock, sandbox start included
    cpu_s: int = 5                        # RLIMIT_CPU per process (SIGXCPU, then SIGKILL)
    address_space_bytes: int = 1 << 30    # RLIMIT_AS per process
    nproc: int = 32                       # RLIMIT_NPROC for the worker uid
    file_size_bytes: int = 16 << 20       # RLIMIT_FSIZE
    nofile: int = 256                     # RLIMIT_NOFILE
    tmpfs_bytes: int = 64 << 20           # size of the private /tmp and of /dev/shm
    tmpfs_inodes: int = 4096              # inodes of each of them
    stdout_bytes: int = 1 << 20           # read at most this much, then kill
    stderr_bytes: int = 1 << 20
    result_bytes: int = 4 << 20           # cap on the worker's answer records
    memory_bytes: int = 1 << 30           # cgroup memory of the whole run (all processes)
    pids: int = 64                        # cgroup pids (processes + threads) of the run
    cpu_cores: float = 1.0                # cgroup CPU quota of the whole run


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
    oom_killed: bool = False
    hardening: str = "full"


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
    a += ["--proc", "/proc", "--perms", "0755", "--dir", "/dev"]
    for node in DEV_NODES:
        a += ["--dev-bind", f"/dev/{node}", f"/dev/{node}"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        a += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    a += ["--symlink", "/proc/self/fd", "/dev/fd", "--dir", "/dev/shm", "--dir", "/tmp",
          "--remount-ro", "/", "--chdir", "/"]
    return a


def _prefix_argv(mode: str, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    return _bwrap_argv(limits) if mode == "bwrap" else []


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
    """"bwrap" where bubblewrap works, else "none" (which refuses to run unless allowed)."""
    forced = os.environ.get("SCCA_SANDBOX_MODE")
    if forced == "unshare":
        raise SandboxUnavailable("sandbox mode 'unshare' was removed: it cannot hide host "
                                 "files, sockets and data from the program; " + INSTALL_HINT)
    if forced:
        if forced not in MODES:
            raise ValueError(f"SCCA_SANDBOX_MODE={forced!r}; expected one of {MODES}")
        mode = forced
    elif shutil.which("bwrap") and _probe("bwrap"):
        mode = "bwrap"
    else:
        mode = "none"
    log.info("sandbox mode: %s", mode)
    return mode


@functools.lru_cache(maxsize=None)
def _kernel_limits() -> tuple[str | None, bool]:
    """(cgroup kind or None, seccomp filter available), probed once per process."""
    kind = cgroup_kind() if _privileged() else None
    try:
        filter_bpf()
        return kind, True
    except SeccompUnavailable as e:
        log.warning("seccomp filter unavailable: %s", e)
        return kind, False


def hardening() -> dict:
    """What this machine gives every run: {"mode", "cgroup": "v1"|"v2"|None, "seccomp":
    bool, "complete": bool, "missing": [str]}."""
    mode = sandbox_mode()
    kind, seccomp = _kernel_limits()
    missing = [m for m, ok in (("bubblewrap (apt-get install bubblewrap)", mode == "bwrap"),
                               ("a writable cgroup (v1, or v2 with memory, pids and cpu "
                                "delegated; run the verifier as root)", kind),
                               ("libseccomp (apt-get install libseccomp2)", seccomp)) if not ok]
    return {"mode": mode, "cgroup": kind, "seccomp": seccomp, "complete": not missing,
            "missing": missing}


def _weak_accepted(accept_weak: bool | None) -> bool:
    return bool(accept_weak) or os.environ.get("SCCA_ACCEPT_WEAK_SANDBOX") == "1"


def require(accept_weak: bool | None = None) -> str:
    """"full" or "weak"; raises SandboxUnavailable when the run would lack a guarantee
    that was not explicitly given up (the verifier calls this at start for code tasks)."""
    h = hardening()
    if h["mode"] == "none" and os.environ.get("SCCA_ALLOW_UNSANDBOXED") != "1":
        raise SandboxUnavailable(
            "bubblewrap does not work here, so model code cannot be sandboxed; " + INSTALL_HINT
            + " (or set SCCA_ALLOW_UNSANDBOXED=1 to run it with rlimits and timeouts only)")
    if h["complete"]:
        return "full"
    if not _weak_accepted(accept_weak):
        raise SandboxUnavailable(
            "the code sandbox would run without " + " and ".join(h["missing"]) + ", so memory, "
            "process and syscall limits would not all be enforced by the kernel; provide them, "
            "or accept weaker limits with [verifier] accept_weak_sandbox = true")
    return "weak"


def _job_base(kind: str, code: str, limits: Limits, mode: str, strength: str) -> dict:
    uid = None
    if _privileged() and mode != "none":
        uid = WORKER_UID_BASE + secrets.randbelow(WORKER_UID_SPAN)
    return {"kind": kind, "code": code, "limits": dataclasses.asdict(limits),
            "worker_uid": uid, "pidns": mode != "none",
            "seccomp": filter_bpf().hex() if hardening()["seccomp"] else "",
            "workdir": "/tmp/work" if mode != "none" else tempfile.mkdtemp(prefix="scca-sbx-"),
            "tmpfs_mounts": ["/tmp", "/dev/shm"] if mode == "bwrap" else [],
            "strength": strength}


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pump(p: subprocess.Popen, job: dict, limits: Limits, caps: dict) -> tuple[dict, bool, bool]:
    """Feed the job on stdin, collect capped stdout/stderr, enforce the wall clock.
    Returns ({fd: bytes}, timed_out, truncated)."""
    t0 = time.monotonic()
    pending = memoryview(json.dumps(job).encode())
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in caps}
    sel = selectors.DefaultSelector()
    for f in (p.stdin, p.stdout, p.stderr):
        os.set_blocking(f.fileno(), False)
    sel.register(p.stdin, selectors.EVENT_WRITE)
    sel.register(p.stdout, selectors.EVENT_READ)
    sel.register(p.stderr, selectors.EVENT_READ)
    open_reads, timed_out, truncated = 2, False, False
    try:
        while open_reads and not truncated:
            left = limits.wall_s - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                f = key.fileobj
                if f is p.stdin:
                    try:
                        pending = pending[os.write(f.fileno(), pending[:READ_CHUNK]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(f)
                        f.close()
                    continue
                chunk = os.read(f.fileno(), READ_CHUNK)
                if not chunk:
                    sel.unregister(f)
                    open_reads -= 1
                    continue
                fd = f.fileno()
                bufs[fd] += chunk
                if len(bufs[fd]) > caps[fd]:
                    del bufs[fd][caps[fd]:]
                    truncated = True
    finally:
        sel.close()
    return bufs, timed_out, truncated


def _execute(job: dict, limits: Limits, mode: str, label: str) -> RunResult:
    """Start the supervisor in `mode` inside a fresh cgroup, feed it `job`, collect capped
    output, enforce the wall clock; then kill whatever is left and remove the cgroup."""
    kind = hardening()["cgroup"] if mode == "bwrap" else None
    cg = RunCgroup(kind, limits.memory_bytes, limits.pids, limits.cpu_cores) if kind else None
    argv = ((cg.enter_argv() if cg else []) + _prefix_argv(mode, limits)
            + [_python()[0], "-I", "-S", "-B", "-c", RUNTIME_SRC, "supervisor", label])
    t0 = time.monotonic()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=HOST_ENV, cwd="/", close_fds=True,
                             start_new_session=True)
        try:
            out_cap = limits.stdout_bytes + (limits.result_bytes * 4 // 3 + REPORT_SLACK
                                             if job["kind"] != "run" else 0)
            caps = {p.stdout.fileno(): out_cap, p.stderr.fileno(): limits.stderr_bytes}
            bufs, timed_out, truncated = _pump(p, job, limits, caps)
            if timed_out or truncated:
                _kill_group(p)
            try:
                rc = p.wait(timeout=max(0.1, limits.wall_s - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(p)
                rc = p.wait()
        finally:
            for f in (p.stdin, p.stdout, p.stderr):
                if not f.closed:
                    f.close()
    finally:
        oom = cg.oom_killed() if cg else False
        if cg:
            cg.close()
        if mode == "none":
            shutil.rmtree(job["workdir"], ignore_errors=True)
    outs = list(bufs.values())          # [stdout, stderr], in the order of `caps`
    if cg and cg.enter_failed(rc, bytes(outs[1])):
        raise SandboxUnavailable(f"could not enter the run's cgroup {cg.dirs}")
    return RunResult(returncode=rc, stdout=outs[0].decode(errors="replace"),
                     stderr=outs[1].decode(errors="replace"), timed_out=timed_out,
                     wall_s=time.monotonic() - t0, truncated=truncated, mode=mode,
                     oom_killed=oom, hardening=job["strength"])


def run_python(code: str, *, stdin: str = "", limits: Limits = DEFAULT_LIMITS,
               label: str = "scca-sandbox", accept_weak: bool | None = None) -> RunResult:
    """Run `code` as a fresh sandboxed Python program (`python -I -S -B`), feeding `stdin`.

    `label` is a public tag placed on the sandbox processes' command lines (tests use it
    to look for strays). The return code is the program's (128+N when signal N killed
    it inside the sandbox; negative when the host killed the sandbox: wall or output cap).
    """
    strength = require(accept_weak)
    mode = sandbox_mode()
    job = _job_base("run", code, limits, mode, strength)
    job["stdin"] = stdin
    return _execute(job, limits, mode, label)


def run_tests(solution_code: str, tests, limits: Limits = DEFAULT_LIMITS,
              label: str = "scca-sandbox", *, rel_tol: float = sandbox_tests.DEFAULT_REL_TOL,
              abs_tol: float = sandbox_tests.DEFAULT_ABS_TOL,
              accept_weak: bool | None = None) -> dict:
    """Run `solution_code` against `tests` in the sandbox; reward 1.0 iff every answer the
    host compares is right and the run finished (see the module docstring).

    `tests`: Python assert code (str) or data cases (list; see sandbox_tests.py). Returns
    {"reward", "reason", "mode", "hardening", "checks", "hidden_checks", "visible_checks",
    "guessable_checks", "attested_asserts", "rel_tol", "abs_tol", "returncode",
    "timed_out", "truncated", "oom_killed", "wall_s", "stderr_tail"}.
    """
    plan = sandbox_tests.plan(tests, rel_tol=rel_tol, abs_tol=abs_tol)
    strength = require(accept_weak)
    mode = sandbox_mode()
    nonce = secrets.token_hex(16)
    job = _job_base(plan.kind, solution_code, limits, mode, strength)
    job.update(nonce=nonce, steps=plan.steps)
    r = _execute(job, limits, mode, label)
    if r.timed_out:
        reward, reason = 0.0, "timeout"
    elif r.truncated:
        reward, reason = 0.0, "output_limit"
    else:
        reward, reason = sandbox_tests.judge(plan, _report(r.stdout, nonce, limits))
        if reward == 0.0 and r.oom_killed:
            reason = "memory_limit (" + reason + ")"
    return {"reward": reward, "reason": reason, "mode": r.mode, "hardening": r.hardening,
            **plan.counts(), "rel_tol": rel_tol, "abs_tol": abs_tol,
            "returncode": r.returncode, "timed_out": r.timed_out, "truncated": r.truncated,
            "oom_killed": r.oom_killed, "wall_s": r.wall_s, "stderr_tail": r.stderr[-500:]}


def _report(stdout: str, nonce: str, limits: Limits) -> dict | None:
    """The supervisor's report line (None if missing or malformed): nonce-prefixed JSON."""
    for line in stdout.split("\n"):
        if not line.startswith(nonce + " "):
            continue
        try:
            rep = json.loads(line[len(nonce) + 1:])
            raw = base64.b64decode(rep["results"], validate=True)
        except (ValueError, KeyError, TypeError):
            return None
        if type(rep) is not dict or len(raw) > limits.result_bytes:
            return None
        return {"rc": rep.get("rc"), "clean": rep.get("clean") is True,
                "over": rep.get("over") is True, "raw": raw}
    return None


NET_PROBE = """
import json, socket, os
out = {"uid": os.getuid()}
for name, fam, addr in (("tcp4", socket.AF_INET, ("1.1.1.1", 53)), ("tcp6", socket.AF_INET6, ("2606:4700:4700::1111", 53))):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(addr)
        out[name] = "connected"
    except OSError as e:
        out[name] = "blocked: " + (e.strerror or type(e).__name__)
    finally:
        s.close()
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out["userns"] = "created" if libc.unshare(0x10000000) == 0 else "blocked: errno %d" % ctypes.get_errno()
print(json.dumps(out))
"""


def self_check(accept_weak: bool | None = None) -> dict:
    """For `scca doctor`: run one tiny program and one tiny test in the sandbox.

    Returns {"mode", "cgroup", "seccomp", "complete", "missing", "ran": bool,
    "network_blocked": bool, "userns_blocked": bool, "test_reward": float, "error": str}.
    Starts nothing else and never raises for a missing sandbox (it reports it)."""
    out = {**hardening(), "ran": False, "network_blocked": False, "userns_blocked": False,
           "test_reward": 0.0, "error": ""}
    try:
        r = run_python(NET_PROBE, limits=Limits(wall_s=8.0), accept_weak=accept_weak)
        probe = json.loads(r.stdout.strip().splitlines()[-1])
        out["ran"] = True
        out["network_blocked"] = all(probe[k].startswith("blocked") for k in ("tcp4", "tcp6"))
        out["userns_blocked"] = probe["userns"].startswith("blocked")
        t = run_tests("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n",
                      Limits(wall_s=8.0), accept_weak=accept_weak)
        out["test_reward"] = t["reward"]
    except (SandboxUnavailable, ValueError, IndexError, KeyError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


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
