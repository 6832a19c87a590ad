"""One kernel cgroup per sandbox run: memory, process and CPU limits the kernel enforces.

What it does: `cgroup_kind()` probes once which hierarchy works here — "v2" (the unified
hierarchy with the memory, pids and cpu controllers enabled below this process's cgroup)
or "v1" (the memory, pids and cpu hierarchies, each writable) — by really creating,
limiting and removing a probe group; None when neither works (not root, read-only
cgroupfs, controllers missing). `RunCgroup(limits)` creates a fresh group below this
process's own cgroup in each hierarchy and sets:
  * memory: `memory.max` (v2; swap `memory.swap.max` = 0) or `memory.limit_in_bytes`
    (+ `memory.memsw.limit_in_bytes` where swap accounting exists) = limits.memory_bytes.
    The memory controller charges anonymous memory, page cache, tmpfs/shmem pages (so
    memfd and /tmp files) and kernel memory (inodes, dentries, page tables, pipe and
    unix-socket buffers; TCP buffers too: v1 gets `memory.kmem.tcp.limit_in_bytes`), so a
    program that outgrows it is OOM-killed inside its group, never the host's processes;
  * pids: `pids.max` = limits.pids (threads count);
  * cpu: `cpu.max` / `cpu.cfs_quota_us` = limits.cpu_cores of CPU time per period.
`enter_argv()` is a `/bin/sh` prefix that moves itself into the group and then execs the
sandbox, so every sandbox process is born inside it. `close()` kills whatever is still in
the group (cgroup.kill on v2, SIGKILL to each listed pid until empty), reads whether the
OOM killer fired, and removes the group.

What it does not do: limit I/O bandwidth or disk (the sandbox has no writable disk, only
size- and inode-capped tmpfs), or work without root/delegation (the host then refuses code
tasks unless `[verifier] accept_weak_sandbox` is set).
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import time

log = logging.getLogger(__name__)

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
KILL_TIMEOUT_S = 5.0       # how long close() keeps killing before it gives up (logged)
RMDIR_RETRIES = 50
# argv: NONCE cgroup.procs... -- command. On failure it writes the nonce (never passed on to
# the command, so a program cannot print it) to stderr: exit status 97 alone would be
# ambiguous, since after `exec` the status is the program's own.
ENTER_SH = ('n=$1; shift; while [ "$1" != -- ]; do { echo 0 > "$1"; } 2>/dev/null || { printf %s "$n" >&2; exit 97; }; '
            'shift; done; shift; exec "$@"')
ENTER_FAILED_RC = 97       # the sh prefix could not join the group (and wrote the nonce)


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_base() -> str | None:
    """The v2 directory our groups go into, with memory/pids/cpu delegated to children."""
    mount = ROOT if os.path.exists(f"{ROOT}/cgroup.controllers") else f"{ROOT}/unified"
    own = _own_paths().get("")
    if own is None or not os.path.exists(f"{mount}/cgroup.controllers"):
        return None
    base = os.path.normpath(mount + own)
    have = set(open(f"{base}/cgroup.controllers").read().split())
    if not {"memory", "pids", "cpu"} <= have:
        return None
    enabled = set(open(f"{base}/cgroup.subtree_control").read().split())
    if not {"memory", "pids", "cpu"} <= enabled:
        _write(f"{base}/cgroup.subtree_control", "+memory +pids +cpu")
    return base


def _v1_bases() -> dict[str, str] | None:
    own = _own_paths()
    bases = {}
    for c in V1_CONTROLLERS:
        mount = f"{ROOT}/{c}"
        if c not in own or not os.path.isdir(mount):
            return None
        bases[c] = os.path.normpath(mount + own[c])
    return bases


class RunCgroup:
    """A cgroup (one dir per v1 hierarchy, or one v2 dir) for one sandbox run."""

    def __init__(self, kind: str, memory_bytes: int, pids: int, cpu_cores: float):
        self.kind = kind
        self.enter_nonce = secrets.token_hex(16)  # what enter_argv's prefix writes when it cannot join
        name = f"scca-{os.getpid()}-{secrets.token_hex(6)}"
        if kind == "v2":
            self.dirs = {"": os.path.join(_v2_base(), name)}
        else:
            self.dirs = {c: os.path.join(b, name) for c, b in _v1_bases().items()}
        made = []
        try:
            for d in self.dirs.values():
                os.mkdir(d, 0o700)
                made.append(d)
            self._limit(memory_bytes, pids, cpu_cores)
        except OSError:
            for d in made:
                os.rmdir(d)
            raise

    def _limit(self, memory_bytes: int, pids: int, cpu_cores: float) -> None:
        quota = max(1000, int(cpu_cores * CPU_PERIOD_US))
        if self.kind == "v2":
            d = self.dirs[""]
            _write(f"{d}/memory.max", str(memory_bytes))
            if os.path.exists(f"{d}/memory.swap.max"):
                _write(f"{d}/memory.swap.max", "0")
            _write(f"{d}/pids.max", str(pids))
            _write(f"{d}/cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        m = self.dirs["memory"]
        _write(f"{m}/memory.limit_in_bytes", str(memory_bytes))
        if os.path.exists(f"{m}/memory.memsw.limit_in_bytes"):
            _write(f"{m}/memory.memsw.limit_in_bytes", str(memory_bytes))
        try:        # v1 accounts TCP buffers only once this is set (v2 always does)
            _write(f"{m}/memory.kmem.tcp.limit_in_bytes", str(memory_bytes))
        except OSError:
            pass
        _write(f"{self.dirs['pids']}/pids.max", str(pids))
        _write(f"{self.dirs['cpu']}/cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(f"{self.dirs['cpu']}/cpu.cfs_quota_us", str(quota))

    def enter_argv(self) -> list[str]:
        procs = [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]
        return ["/bin/sh", "-c", ENTER_SH, "scca-cgroup", self.enter_nonce, *procs, "--"]

    def enter_failed(self, rc: int, stderr: bytes) -> bool:
        """Did the prefix of enter_argv fail to join the group (not: the program exited 97)?"""
        return rc == ENTER_FAILED_RC and stderr.startswith(self.enter_nonce.encode())

    def _pids(self) -> set[int]:
        out = set()
        for d in self.dirs.values():
            try:
                with open(f"{d}/cgroup.procs") as f:
                    out.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return out

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory") or self.dirs.get("")
        name = "memory.oom_control" if self.kind == "v1" else "memory.events"
        try:
            with open(f"{d}/{name}") as f:
                return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
                           for line in f if line.strip())
        except OSError:
            return False

    def close(self) -> bool:
        """Kill every process left in the group and remove it; True iff it is empty."""
        deadline = time.monotonic() + KILL_TIMEOUT_S
        if self.kind == "v2" and os.path.exists(f"{self.dirs['']}/cgroup.kill"):
            _write(f"{self.dirs['']}/cgroup.kill", "1")
        while (pids := self._pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)
        empty = not pids
        for d in self.dirs.values():
            for _ in range(RMDIR_RETRIES):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:             # EBUSY while the last task is still exiting
                    time.sleep(0.01)
            else:
                log.warning("could not remove cgroup %s", d)
        return empty


def _remove_stale(bases: list[str]) -> None:
    """Remove empty groups left by scorer processes that were killed (scca-<dead pid>-*)."""
    for base in bases:
        for name in os.listdir(base):
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == "scca" and parts[1].isdigit() \
                    and not os.path.exists(f"/proc/{parts[1]}"):
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass


@functools.lru_cache(maxsize=None)
def cgroup_kind() -> str | None:
    """"v2", "v1" or None: the first hierarchy in which a probe group really works."""
    for kind, ok in (("v2", _v2_base), ("v1", _v1_bases)):
        try:
            bases = ok()
            if bases is None:
                continue
            _remove_stale([bases] if isinstance(bases, str) else list(bases.values()))
            RunCgroup(kind, 64 << 20, 8, 1.0).close()
            return kind
        except OSError as e:
            log.info("cgroup %s not usable here: %s", kind, e)
    return None
