"""Code that runs INSIDE the sandbox: the trusted supervisor and the untrusted worker.

Stdlib only. The host (verifiers/sandbox.py) reads this file's text and starts it as
`python -I -S -B -c <source> supervisor LABEL` inside bubblewrap / unshare; the
supervisor starts the worker the same way (`... worker LABEL JOB_FD RESULT_FD`).
The host also imports `encode_value` / `decode_value` from here to ship expected values.

Supervisor (trusted, never runs model code):
  1. reads its job (JSON) from stdin: the nonce, the model code, the rewritten tests, the
     expected values of the hidden checks, limits, the worker uid;
  2. marks itself non-dumpable (so a same-uid worker cannot read its memory or fds via
     /proc or ptrace), then fork+execs the worker with rlimits and, when it is root in
     the init user namespace, a fresh per-run uid (so RLIMIT_NPROC binds and it cannot
     touch the supervisor at all). exec wipes the supervisor's memory from the worker;
  3. waits for the worker, kills every other process in the PID namespace and waits until
     they are gone (so nothing can write after the verdict), then judges the records the
     worker wrote to RESULT_FD against the expected values it alone holds;
  4. writes "\\n<nonce>\\n" as the last stdout line iff everything passed, else
     "\\nscca-fail: <reason>\\n".

Worker (runs model code): execs the solution, then the rewritten tests in the same
namespace; `__scca_check__(k, value)` writes {"k", "v": encode_value(value)} records.

Not done here: judging what the host cannot see; the host trusts only the nonce line.
"""
import builtins
import json
import os
import signal
import sys
import time

MAX_DEPTH = 64            # nesting limit of encoded values
CLEANUP_TIMEOUT_S = 2.0   # how long the supervisor waits for killed processes to vanish
PR_SET_DUMPABLE = 4
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MNT_DETACH = 2, 4, 4096, 16384, 2


class Unencodable:
    """Decoded stand-in for a value that is not builtin data: equal to nothing, falsy."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    def __bool__(self):
        return False

    __hash__ = object.__hash__


def encode_value(v, depth=0):
    """Type-tagged, exact JSON form of builtin data (exact type checks: no subclasses)."""
    t = type(v)
    if depth > MAX_DEPTH:
        return ["?", "too_deep"]
    if v is None:
        return ["N"]
    if t is bool:
        return ["b", v]
    if t is int:
        return ["i", hex(v)]
    if t is float:
        return ["f", v.hex()]
    if t is complex:
        return ["c", v.real.hex(), v.imag.hex()]
    if t is str:
        return ["s", v]
    if t is bytes:
        return ["B", v.hex()]
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
        return [tag, [encode_value(x, depth + 1) for x in v]]
    if t is dict:
        return ["d", [[encode_value(k, depth + 1), encode_value(x, depth + 1)] for k, x in v.items()]]
    return ["?", t.__name__ if type(t.__name__) is str else "object"]


def decode_value(e, depth=0):
    """Inverse of encode_value; builds fresh builtin objects (raises on malformed input)."""
    if depth > MAX_DEPTH + 1 or type(e) is not list or not e:
        raise ValueError("malformed value")
    tag = e[0]
    if tag == "N":
        return None
    if tag == "b" and type(e[1]) is bool:
        return e[1]
    if tag == "i":
        return int(e[1], 16)
    if tag == "f":
        return float.fromhex(e[1])
    if tag == "c":
        return complex(float.fromhex(e[1]), float.fromhex(e[2]))
    if tag == "s" and type(e[1]) is str:
        return e[1]
    if tag == "B":
        return bytes.fromhex(e[1])
    if tag in ("l", "t", "S", "F"):
        items = [decode_value(x, depth + 1) for x in e[1]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d":
        return {decode_value(k, depth + 1): decode_value(x, depth + 1) for k, x in e[1]}
    if tag == "?":
        return Unencodable(str(e[1]))
    raise ValueError("malformed value")


def satisfied(spec, value):
    """Does the decoded `value` meet the check `spec`? Only builtin objects compared."""
    op = spec["op"]
    if op == "eq":
        expected = decode_value(spec["value"])
        return not isinstance(value, Unencodable) and value == expected
    if op == "is":
        return value is decode_value(spec["value"])
    if op == "pair":      # value is the [left, right] pair, both decoded
        return not any(isinstance(x, Unencodable) for x in value) and value[0] == value[1]
    if op == "truthy":
        return not isinstance(value, Unencodable) and bool(value)
    if op == "falsy":
        return not isinstance(value, Unencodable) and not bool(value)
    raise ValueError("unknown op %r" % op)


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
    if not pidns and uid is None:         # mode "none", not root: the worker's group only
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


def _start_worker(argv, env, uid, lim, workdir, keep_fds):
    """fork + execve the worker with its uid and rlimits; returns (pid, stdin write fd)."""
    import resource as R
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(in_r)
        return pid, in_w
    try:                                  # child: trusted code until execve
        os.dup2(in_r, 0)
        os.closerange(3, min(keep_fds))
        for fd in range(min(keep_fds), 1024):
            if fd not in keep_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for fd in keep_fds:
            os.set_inheritable(fd, True)
        os.setsid()
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
        os.execve(argv[0], argv, env)
    except BaseException as e:
        os.write(2, ("sandbox: worker start failed: %r\n" % (e,)).encode())
    os._exit(127)


def supervise(label):
    import select
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
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
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": "/tmp"}
    argv = [sys.executable, "-I", "-S", "-B", "-c", job["runtime_src"], "worker", label,
            str(job_r), str(res_w)]
    wjob = json.dumps({"kind": job["kind"], "code": job["code"], "tests": job.get("tests", "")})
    pid, in_w = _start_worker(argv, env, uid, lim, workdir, (job_r, res_w))
    os.close(job_r)
    os.close(res_w)
    pidfd = os.pidfd_open(pid)
    pending = {job_w: memoryview(wjob.encode()), in_w: memoryview(job.get("stdin", "").encode())}
    for fd in pending:
        os.set_blocking(fd, False)
    chunks, total, status = [], 0, None
    while status is None:
        for fd in [fd for fd, buf in pending.items() if not buf]:
            os.close(fd)
            del pending[fd]
        rd, wr, _ = select.select([pidfd] + ([res_r] if res_r >= 0 else []), list(pending), [])
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
        if pidfd in rd:
            status = os.waitpid(pid, 0)[1]
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


def judge(rc, raw, checks, clean):
    """Verdict string from the worker's exit code and records; "pass" iff all hold."""
    if not clean:
        return "cleanup_failed"
    records, done, error = [], False, None
    for line in raw.split(b"\n"):
        if not line:
            continue
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            return "bad_record"
        if type(r) is not dict:
            return "bad_record"
        if r.get("done") is True:
            done = True
        elif "error" in r:
            error = str(r["error"])[:200]
        else:
            records.append(r)
    seen = set()
    for r in records:
        k = r.get("k")
        if type(k) is not int or not 0 <= k < len(checks):
            return "bad_record"
        spec = checks[k]
        try:
            value = decode_value(r.get("v"))
            if spec["op"] == "pair":
                value = [value[0], value[1]] if type(value) is list and len(value) == 2 else None
                if value is None:
                    return "bad_record"
            ok = satisfied(spec, value)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
            return "bad_record"
        if not ok:
            return "wrong_answer (check %d)" % k
        seen.add(k)
    if error is not None:
        return "error: " + error
    if rc != 0:
        return "exit_status %d" % rc
    if not done:
        return "tests_not_finished"
    missing = [k for k, s in enumerate(checks) if s["required"] and k not in seen]
    if missing:
        return "check_not_run (check %d)" % missing[0]
    return "pass"


# ---------------------------------------------------------------------------- worker

def work(job_fd, result_fd):
    with os.fdopen(job_fd, "rb") as f:
        job = json.loads(f.read())
    g = {"__name__": "__main__", "__builtins__": builtins}
    if job["kind"] == "run":
        os.close(result_fd)
        exec(compile(job["code"], "<program>", "exec"), g)
        return
    out = os.fdopen(result_fd, "w", buffering=1)

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

    for stage, src in (("solution", job["code"]), ("tests", job["tests"])):
        if stage == "tests":
            g["__scca_check__"], g["__scca_pair__"] = check, pair
        try:
            exec(compile(src, "<%s>" % stage, "exec"), g)
        except BaseException as e:      # the fault policy: any exception fails the run
            finish({"error": "%s: %s" % (stage, type(e).__name__)}, 1)
    finish({"done": True}, 0)


if __name__ == "__main__":
    if sys.argv[1] == "supervisor":
        supervise(sys.argv[2])
    elif sys.argv[1] == "worker":
        work(int(sys.argv[3]), int(sys.argv[4]))
