"""The sandbox's seccomp filter, built on the host with libseccomp (ctypes, no extra package).

What it does: `filter_bpf()` returns the raw classic-BPF program (bytes, 8 per instruction)
that the sandbox worker installs on itself (prctl NO_NEW_PRIVS + SECCOMP_MODE_FILTER, see
sandbox_runtime.py) after dropping to its per-run uid and before any model code runs. The
filter is inherited by every process the model code starts and cannot be removed.

Policy: everything is allowed except what lets a program leave its limits or reach past
its namespaces; those calls fail with EPERM (EAFNOSUPPORT for socket families, ENOSYS for
clone3 so glibc falls back to clone, whose flags the filter can read):
  * new namespaces (unshare, setns, clone with any CLONE_NEW* flag): a nested user
    namespace would let the program mount an unlimited tmpfs;
  * mounts of any kind (mount, umount2, pivot_root, chroot and the new mount API);
  * the kernel keyrings (add_key, keyctl, request_key): entries outlive the sandbox;
  * memfd_create / memfd_secret: anonymous files outside the address-space limit;
  * ptrace and cross-process memory access (process_vm_*, pidfd_getfd);
  * sockets other than AF_UNIX / AF_INET / AF_INET6 (AF_VSOCK reaches the hypervisor
    host, AF_NETLINK / AF_PACKET / AF_ALG are kernel attack surface); io_uring, bpf,
    perf_event_open, userfaultfd, open_by_handle_at, kexec, modules, reboot, swap, acct,
    quotactl, syslog, iopl/ioperm, TIOCSTI (typing into a terminal);
  * every non-native ABI (i386 `int 0x80`, x32) is killed (libseccomp's bad-arch action).

What it does not do: it is no allow-list (ordinary file, process and network calls stay
open: the namespaces, the read-only root and the cgroup bound those), and where
libseccomp.so.2 cannot be loaded it raises SeccompUnavailable (the host then refuses code
tasks unless weaker limits were accepted).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000            # | errno
SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 3, 4, 5, 7
BPF_INSN_BYTES = 8

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "add_key", "keyctl", "request_key", "memfd_create", "memfd_secret",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "userfaultfd", "open_by_handle_at", "name_to_handle_at", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "iopl", "ioperm", "vhangup",
    "lookup_dcookie", "fanotify_init", "uselib", "personality", "modify_ldt",
)
CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                  0x40000000, 0x00000080)   # NEWNS CGROUP UTS IPC USER PID NET TIME
SOCKET_FAMILIES_OK = (1, 2, 10)            # AF_UNIX, AF_INET, AF_INET6
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


class SeccompUnavailable(RuntimeError):
    """libseccomp could not be loaded or could not build the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _lib():
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(f"libseccomp not found ({e}); install libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _rules() -> list[tuple[str, int, list[tuple[int, int, int, int]]]]:
    """(syscall, action, [(arg, op, a, b)]) — comparisons of one rule are ANDed, rules ORed."""
    eperm = SCMP_ACT_ERRNO | errno.EPERM
    noaf = SCMP_ACT_ERRNO | errno.EAFNOSUPPORT
    rules = [(name, eperm, []) for name in DENIED]
    rules += [("clone", eperm, [(0, SCMP_CMP_MASKED_EQ, f, f)]) for f in CLONE_NS_FLAGS]
    rules.append(("clone3", SCMP_ACT_ERRNO | errno.ENOSYS, []))
    lo, hi = min(SOCKET_FAMILIES_OK), max(SOCKET_FAMILIES_OK)
    for call in ("socket", "socketpair"):
        rules.append((call, noaf, [(0, SCMP_CMP_LE, lo - 1, 0)]))
        rules.append((call, noaf, [(0, SCMP_CMP_GE, hi + 1, 0)]))
        for family in range(lo + 1, hi):          # libseccomp: one comparison per argument
            if family not in SOCKET_FAMILIES_OK:
                rules.append((call, noaf, [(0, SCMP_CMP_EQ, family, 0)]))
    rules += [("ioctl", eperm, [(1, SCMP_CMP_EQ, req, 0)]) for req in (TIOCSTI, TIOCLINUX)]
    return rules


@functools.lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The filter as raw BPF instructions (cached; raises SeccompUnavailable)."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for name, action, cmps in _rules():
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue                      # not a syscall on this architecture
            arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)
    prog = b"".join(chunks)
    if not prog or len(prog) % BPF_INSN_BYTES:
        raise SeccompUnavailable("libseccomp exported an empty or malformed filter")
    return prog
