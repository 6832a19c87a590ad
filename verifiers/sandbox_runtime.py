"""Code that runs INSIDE the sandbox: the supervisor and the worker (stdlib only).

The host (verifiers/sandbox.py) starts this file's text, with sandbox_verdict.py's source
in front, as `python -I -S -B -c <source> supervisor LABEL` inside bubblewrap and the
run's cgroup (LABEL is a public tag on the command line).

Supervisor (never runs model code):
  1. forks the worker FIRST, before it reads anything: the worker's memory holds no
     nonce; the worker drops the host's stdin and (kind "tests") stdout at once;
  2. reads its job (JSON) from stdin, marks itself non-dumpable, mounts the private /tmp
     and /dev/shm as tmpfs capped in bytes AND inodes, and sends the worker its part;
  3. waits for the worker, kills every other process of the PID namespace and waits until
     they are gone, so nothing writes after the report;
  4. kind "tests": writes one line `<nonce> <json report>` to stdout: the worker's exit
     status, whether cleanup succeeded, and the worker's answer records (base64, capped).
     It judges nothing: the expected answers never enter the sandbox; the host compares.

Worker (runs model code): new session, a fresh per-run uid (root supervisor), rlimits, a
stripped environment (USER/LOGNAME set so getpass works), NO_NEW_PRIVS and the host-built
seccomp filter; then:
  * kind "tests": runs the solution, then each step in order — `exec` steps (setup the
    tests need; asserts inside are attested only) and `eval` steps (one answer per call)
    — writing one record per step to its result pipe: {"i", "v": encode_value(answer)},
    {"i", "ok": 1} or {"i", "exc": type name} (and stops at the first exception);
  * kind "io": runs the program once per stdin case, each in a fresh fork (clean
    interpreter state), and records {"i", "out": captured stdout, "rc"};
  * kind "run": behaves like `python -c code` with the host's pipes as stdin/stdout.

Not done here: comparing answers (the host does, see sandbox_tests.py).
"""
import base64
import builtins
import json
import os
import signal
import sys
import threading
import time

try:                 # on the host; in the sandbox sandbox_verdict.py's source is prepended
    from verifiers.sandbox_verdict import decode_value, encode_value
except ImportError:
    pass

CLEANUP_TIMEOUT_S = 2.0   # how long the supervisor waits for killed processes to vanish
POLL_S = 0.01             # worker-exit polling interval where pidfd_open is missing
PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 4, 1, 38, 22
SECCOMP_MODE_FILTER = 2
MS_NOSUID, MS_NODEV = 2, 4
CASE_OUT_CAP = 1 << 20    # stdout bytes kept per stdin/stdout case


# ---------------------------------------------------------------------------- supervisor

def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _set_nondumpable():
    ctypes, libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def _mount_tmpfs(path, size, inodes):
    ctypes, libc = _libc()
    opts = "size=%d,nr_inodes=%d,mode=1777" % (size, inodes)
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs on %s" % path)


def _others(pidns, uid):
    """Processes to kill: in our own PID namespace all but init and us; outside one (mode
    "none") only those of the per-run worker uid."""
    me, out = os.getpid(), []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in (1, me):
            continue
        try:
            if pidns:
                out.append(int(p))
            elif uid is not None:
                with open("/proc/%s/status" % p) as f:
                    if any(l.startswith("Uid:") and int(l.split()[1]) == uid for l in f):
                        out.append(int(p))
        except OSError:
            pass
    return out


def _kill_all_others(pidns, uid, worker_pid):
    """Kill the worker's leftovers and wait until they are gone (True) or give up (False)."""
    if not pidns:                         # mode "none": the worker's process group only
        try:
            os.killpg(worker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while True:
        pids = _others(pidns, uid)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def _pump(pid, pending, res_r, cap):
    """Feed the worker its job/stdin and collect its result pipe until it exits.
    Returns (wait status, result bytes, over_cap)."""
    import select
    try:
        pidfd = os.pidfd_open(pid)          # readable when the worker exits (Linux >= 5.3)
    except (AttributeError, OSError):
        pidfd = None
    for fd in pending:
        os.set_blocking(fd, False)
    chunks, total, status = [], 0, None
    while status is None:
        for fd in [fd for fd, buf in pending.items() if not buf]:
            os.close(fd)
            del pending[fd]
        reads = [fd for fd in (pidfd, res_r) if fd is not None and fd >= 0]
        rd, wr, _ = select.select(reads, list(pending), [], None if pidfd is not None else POLL_S)
        for fd in wr:
            try:
                pending[fd] = pending[fd][os.write(fd, pending[fd][:65536]):]
            except BlockingIOError:
                pass
            except BrokenPipeError:              # the reader is gone: drop the rest
                pending[fd] = pending[fd][:0]
        if res_r >= 0 and res_r in rd:
            b = os.read(res_r, 65536)
            total += len(b)
            chunks.append(b)
            if not b or total > cap:
                os.close(res_r)
                res_r = -1
                if b:                             # over the cap: the verdict is lost anyway
                    os.kill(pid, signal.SIGKILL)
        if pidfd is None or pidfd in rd:
            done_pid, st = os.waitpid(pid, 0 if pidfd is not None else os.WNOHANG)
            status = st if done_pid == pid else None
    for fd in pending:
        os.close(fd)
    return status, chunks, total, res_r


def supervise():
    """See the module docstring. The worker is forked FIRST, before any secret is read."""
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:                     # worker: drop the host's stdin (the nonce comes there)
        try:
            os.dup2(in_r, 0)
            for fd in (in_r, in_w, job_w, res_r):
                os.close(fd)
            work(job_r, res_w)
        finally:
            os._exit(127)
    for fd in (job_r, res_w, in_r):
        os.close(fd)
    job = json.loads(sys.stdin.buffer.read())
    _set_nondumpable()
    lim = job["limits"]
    for path in job["tmpfs_mounts"]:
        _mount_tmpfs(path, lim["tmpfs_bytes"], lim["tmpfs_inodes"])
    workdir = job["workdir"]
    os.makedirs(workdir, exist_ok=True)
    if job["worker_uid"] is not None:
        os.chown(workdir, job["worker_uid"], job["worker_uid"])
    wjob = {k: job.get(k) for k in ("kind", "code", "steps", "limits", "worker_uid", "pidns",
                                    "seccomp")}
    wjob.update(workdir=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                      "HOME": workdir, "TMPDIR": "/tmp", "USER": "sandbox",
                                      "LOGNAME": "sandbox"})
    pending = {job_w: memoryview(json.dumps(wjob).encode()),
               in_w: memoryview(job.get("stdin", "").encode())}
    status, chunks, total, res_r = _pump(pid, pending, res_r, lim["result_bytes"])
    clean = _kill_all_others(job["pidns"], job["worker_uid"], pid)
    while res_r >= 0 and total <= lim["result_bytes"]:       # every writer is dead: drain
        b = os.read(res_r, 65536)
        if not b:
            break
        total += len(b)
        chunks.append(b)
    rc = os.waitstatus_to_exitcode(status)
    if job["kind"] == "run":
        os._exit(rc if rc >= 0 else 128 - rc)
    raw = b"".join(chunks)[:lim["result_bytes"]]
    report = {"rc": rc, "clean": clean, "over": total > lim["result_bytes"],
              "results": base64.b64encode(raw).decode()}
    os.write(1, ("%s %s\n" % (job["nonce"], json.dumps(report))).encode())
    os._exit(0)


# ---------------------------------------------------------------------------- worker

def _install_seccomp(prog_hex):
    """NO_NEW_PRIVS, then the host-built filter (raw BPF) on this process and its children."""
    ctypes, libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if not prog_hex:
        return
    prog = bytes.fromhex(prog_hex)

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _drop_privileges(job):
    """In the forked worker, before any model code: new session, per-run uid, rlimits,
    environment, NO_NEW_PRIVS + seccomp. Without a PID namespace (mode "none", best
    effort) the worker gets its own process group and dies with the supervisor."""
    import resource as R
    uid, lim = job["worker_uid"], job["limits"]
    if job["pidns"]:
        os.setsid()
    else:
        _, libc = _libc()
        os.setpgid(0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    R.setrlimit(R.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    R.setrlimit(R.RLIMIT_AS, (lim["address_space_bytes"],) * 2)
    R.setrlimit(R.RLIMIT_NPROC, (lim["nproc"],) * 2)
    R.setrlimit(R.RLIMIT_FSIZE, (lim["file_size_bytes"],) * 2)
    R.setrlimit(R.RLIMIT_NOFILE, (lim["nofile"],) * 2)
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    os.chdir(job["workdir"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv[:] = ["-c"]
    _install_seccomp(job["seccomp"])


def _exit_status(e):
    """Exit status of an uncaught exception, as the interpreter would report it."""
    if isinstance(e, SystemExit):
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    import traceback
    traceback.print_exception(e)
    return 1


def _main_namespace():
    """A fresh module installed as sys.modules["__main__"]: the program's globals, so that
    pickling its functions (multiprocessing) finds them as `__main__.name`."""
    import types
    mod = types.ModuleType("__main__")
    mod.__builtins__ = builtins
    sys.modules["__main__"] = mod
    return mod.__dict__


def _flush_std():
    """Flush the program's stdout/stderr before os._exit (a closed or broken stream is ignored)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass


def _run_program(code):
    """Behave like `python -c code` (atexit hooks, non-daemon threads); never returns."""
    g = _main_namespace()
    status = 0
    try:
        exec(compile(code, "<program>", "exec"), g)
        if "threading" in sys.modules:
            for t in threading.enumerate():
                if t is not threading.main_thread() and not t.daemon:
                    t.join()
    except BaseException as e:
        status = _exit_status(e)
    import atexit
    atexit._run_exitfuncs()
    _flush_std()
    os._exit(status)


def _one_case(code, stdin_text, out):
    """Kind "io": run `code` on `stdin_text` in a fresh fork; (captured stdout, status)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            for fd in (in_r, in_w, out_r, out_w, out.fileno()):
                os.close(fd)
            sys.stdin = open(0, "r", closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            _run_program(code)
        finally:
            os._exit(127)
    os.close(in_r)
    os.close(out_w)
    feeder = threading.Thread(target=_feed, args=(in_w, stdin_text.encode()), daemon=True)
    feeder.start()
    chunks, total = [], 0
    while b := os.read(out_r, 65536):
        if total < CASE_OUT_CAP:
            chunks.append(b)
        total += len(b)
    os.close(out_r)
    _, st = os.waitpid(pid, 0)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    feeder.join()
    return b"".join(chunks)[:CASE_OUT_CAP].decode("utf-8", "replace"), os.waitstatus_to_exitcode(st)


def _feed(fd, data):
    try:
        while data:
            data = data[os.write(fd, data[:65536]):]
    except OSError:
        pass
    finally:
        os.close(fd)


def work(job_fd, result_fd):
    """The forked worker: read its job, drop privileges, run model code; never returns."""
    with os.fdopen(job_fd, "rb") as f:
        job = json.loads(f.read())
    if job["kind"] != "run":
        os.dup2(2, 1)                # the host's stdout carries the supervisor's report only
    _drop_privileges(job)
    if job["kind"] == "run":
        os.close(result_fd)
        _run_program(job["code"])
    out = os.fdopen(result_fd, "w", buffering=1)
    kind, code, steps = job["kind"], job["code"], job["steps"]
    del job, f

    def record(r, status=None):
        out.write(json.dumps(r) + "\n")
        if status is not None:
            out.flush()
            _flush_std()
            os._exit(status)

    if kind == "io":
        for i, step in enumerate(steps):
            text, rc = _one_case(code, step["stdin"], out)
            record({"i": i, "out": text, "rc": rc})
        record({"done": True}, 0)
    g = _main_namespace()
    try:
        exec(compile(code, "<solution>", "exec"), g)
    except BaseException as e:      # the fault policy: any exception ends the run
        record({"stage": "solution", "exc": type(e).__name__}, 1)
    for i, step in enumerate(steps):
        try:
            for name, value in step.get("bind", {}).items():
                g[name] = decode_value(value)
            if "exec" in step:
                exec(compile(step["exec"], "<tests>", "exec"), g)
                record({"i": i, "ok": 1})
            else:
                record({"i": i, "v": encode_value(eval(compile(step["eval"], "<tests>", "eval"), g))})
        except BaseException as e:
            record({"i": i, "exc": type(e).__name__}, 1)
    record({"done": True}, 0)


if __name__ == "__main__" and sys.argv[1:2] == ["supervisor"]:
    supervise()
