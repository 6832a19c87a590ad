"""Code that runs INSIDE the sandbox: the trusted supervisor and the untrusted worker.

Stdlib only. The host (verifiers/sandbox.py) reads this file's text and starts it as
`python -I -S -B -c <source> supervisor LABEL` inside bubblewrap / unshare (LABEL is a
public tag on the command line). The host also imports `encode_value` / `decode_value`
and `judge` from here.

Supervisor (trusted, never runs model code):
  1. FIRST forks the worker, before reading anything: the worker's copy of memory holds
     no secret, and it closes the host's stdin pipe at once;
  2. reads its job (JSON) from stdin: the nonce, the model code, the rewritten tests, the
     expected values of the hidden checks, limits, the worker uid; marks itself
     non-dumpable (a same-uid worker cannot read its memory or fds via /proc or ptrace);
     sends the worker only what it may see (code, rewritten tests, uid, limits);
  3. waits for the worker, kills every other process in the PID namespace and waits until
     they are gone (so nothing can write after the verdict), then judges the records the
     worker wrote to its result pipe against the expected values it alone holds;
  4. writes "\\n<nonce>\\n" as the last stdout line iff everything passed, else
     "\\nscca-fail: <reason>\\n".

Worker (runs model code): drops to the per-run uid (when the supervisor is root in the
init user namespace) with rlimits and a new session, then runs the solution and the
rewritten tests in one namespace; `__scca_check__(k, value)` writes
{"k", "v": encode_value(value)} records. Kind "run" just runs a program like `python -c`.

Not done here: judging what the host cannot see; the host trusts only the nonce line.
"""
import builtins
import json
import os
import signal
import sys
import time

try:                 # on the host; in the sandbox sandbox_verdict.py's source is prepended
    from verifiers.sandbox_verdict import encode_value, judge
except ImportError:
    pass

CLEANUP_TIMEOUT_S = 2.0   # how long the supervisor waits for killed processes to vanish
POLL_S = 0.01             # worker-exit polling interval where pidfd_open is missing
PR_SET_DUMPABLE, PR_SET_PDEATHSIG = 4, 1
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MNT_DETACH = 2, 4, 4096, 16384, 2


# ---------------------------------------------------------------------------- supervisor

def _set_nondumpable():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def _mount(src, dst, fstype, flags, opts):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(src.encode(), dst.encode(), fstype and fstype.encode(), flags,
                  opts and opts.encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount %s on %s" % (src, dst))


def _mount_tmpfs(path, size):
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % size)


def _expose(path):
    """Mode "unshare": make `path` reachable for the worker uid when an ancestor is not
    world-searchable (e.g. a Python under /root): hide that ancestor under a tmpfs and
    bind `path` back into it. Needs root in a private mount namespace."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        anc = "/".join(parts[:i])
        if os.stat(anc).st_mode & 0o001 == 0:
            break
    else:
        return
    stage = "/tmp/.scca-expose-%d" % len(os.listdir("/tmp"))
    os.mkdir(stage, 0o755)
    _mount(path, stage, None, MS_BIND | MS_REC, None)
    _mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "size=65536,mode=0755")
    os.makedirs(path, mode=0o755)
    _mount(stage, path, None, MS_BIND | MS_REC, None)
    import ctypes
    ctypes.CDLL(None).umount2(stage.encode(), MNT_DETACH)
    os.rmdir(stage)


def _uid_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return -1


def _others(pidns, uid):
    """Processes to kill: in our own PID namespace all but init and us; outside one (mode
    "none") only those of the per-run worker uid."""
    me, out = os.getpid(), []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in (1, me):
            continue
        try:
            if pidns or (uid is not None and _uid_of(int(p)) == uid):
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


def _drop_privileges(uid, lim, workdir, env, pidns):
    """In the forked worker, before any model code: new session, per-run uid, rlimits.
    Without a PID namespace (mode "none", best effort) the worker gets its own process
    group, which the supervisor kills, and dies with the supervisor (PR_SET_PDEATHSIG)."""
    import resource as R
    if pidns:
        os.setsid()
    else:
        import ctypes
        os.setpgid(0, 0)
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(env)
    sys.argv[:] = ["-c"]


def supervise():
    """See the module docstring. The worker is forked FIRST, before any secret is read."""
    import select
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:                     # worker: drop the host's stdin (secrets come there)
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
    lim, uid = job["limits"], job["worker_uid"]
    for path in job["tmpfs_mounts"]:
        _mount_tmpfs(path, lim["tmpfs_bytes"])
    for path in job["expose"]:
        _expose(path)
    workdir = job["workdir"]
    os.makedirs(workdir, exist_ok=True)
    if uid is not None:
        os.chown(workdir, uid, uid)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": "/tmp"}
    wjob = json.dumps({"kind": job["kind"], "code": job["code"], "tests": job.get("tests", ""),
                       "uid": uid, "limits": lim, "workdir": workdir, "env": env,
                       "pidns": job["pidns"]})
    try:
        pidfd = os.pidfd_open(pid)          # readable when the worker exits (Linux >= 5.3)
    except (AttributeError, OSError):
        pidfd = None                        # older kernels: poll waitpid every POLL_S
    pending = {job_w: memoryview(wjob.encode()), in_w: memoryview(job.get("stdin", "").encode())}
    for fd in pending:
        os.set_blocking(fd, False)
    chunks, total, status = [], 0, None
    while status is None:
        for fd in [fd for fd, buf in pending.items() if not buf]:
            os.close(fd)
            del pending[fd]
        rd, wr, _ = select.select([fd for fd in (pidfd, res_r) if fd is not None and fd >= 0],
                                  list(pending), [], None if pidfd is not None else POLL_S)
        for fd in wr:
            try:
                pending[fd] = pending[fd][os.write(fd, pending[fd][:65536]):]
            except BlockingIOError:
                pass
            except BrokenPipeError:              # the reader is gone: drop the rest
                pending[fd] = pending[fd][:0]
        if res_r in rd:
            total = _take(res_r, chunks, total, lim["result_bytes"])
            if total < 0:
                os.close(res_r)
                res_r = -1
        if pidfd is None or pidfd in rd:
            done_pid, st = os.waitpid(pid, 0 if pidfd is not None else os.WNOHANG)
            status = st if done_pid == pid else None
    for fd in pending:
        os.close(fd)
    clean = _kill_all_others(job["pidns"], uid, pid)
    while res_r >= 0 and total >= 0:       # every writer is dead: drain to EOF
        total = _take(res_r, chunks, total, lim["result_bytes"])
    rc = os.waitstatus_to_exitcode(status)
    if job["kind"] == "run":
        os._exit(rc if rc >= 0 else 128 - rc)
    verdict = judge(rc, b"".join(chunks), job["checks"], clean)
    out = ("\n%s\n" % job["nonce"]) if verdict == "pass" else ("\nscca-fail: %s\n" % verdict)
    os.write(1, out.encode())
    os._exit(0 if verdict == "pass" else 1)


def _take(fd, chunks, total, cap):
    """Read once from the result pipe; returns the new total, or -1 at EOF / over the cap."""
    b = os.read(fd, 65536)
    if not b:
        return -1
    total += len(b)
    if total > cap:
        chunks.append(b"\0OVER")        # poisons the record stream: judged bad_record
        return -1
    chunks.append(b)
    return total


# ---------------------------------------------------------------------------- worker

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


def _run_program(code, g):
    """Kind "run": behave like `python -c code` (atexit hooks, non-daemon threads)."""
    status = 0
    try:
        exec(compile(code, "<program>", "exec"), g)
        if "threading" in sys.modules:
            import threading
            for t in threading.enumerate():
                if t is not threading.main_thread() and not t.daemon:
                    t.join()
    except BaseException as e:
        status = _exit_status(e)
    import atexit
    atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def work(job_fd, result_fd):
    """The forked worker: read its job, drop privileges, run model code; never returns."""
    with os.fdopen(job_fd, "rb") as f:
        job = json.loads(f.read())
    _drop_privileges(job["uid"], job["limits"], job["workdir"], job["env"], job["pidns"])
    g = {"__name__": "__main__", "__builtins__": builtins}
    if job["kind"] == "run":
        os.close(result_fd)
        _run_program(job["code"], g)
    out = os.fdopen(result_fd, "w", buffering=1)
    del job_fd, f

    def finish(record, code):
        try:
            out.write(json.dumps(record) + "\n")
            out.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

    def check(k, value):
        out.write(json.dumps({"k": k, "v": encode_value(value)}) + "\n")

    def pair(k, left, right):
        out.write(json.dumps({"k": k, "v": ["l", [encode_value(left), encode_value(right)]]}) + "\n")

    code, tests = job["code"], job["tests"]
    del job
    for stage, src in (("solution", code), ("tests", tests)):
        if stage == "tests":
            g["__scca_check__"], g["__scca_pair__"] = check, pair
        try:
            exec(compile(src, "<%s>" % stage, "exec"), g)
        except BaseException as e:      # the fault policy: any exception fails the run
            finish({"error": "%s: %s" % (stage, type(e).__name__)}, 1)
    finish({"done": True}, 0)


if __name__ == "__main__" and sys.argv[1:2] == ["supervisor"]:
    supervise()
