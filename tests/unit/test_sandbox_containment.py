"""Adversarial corpus, part 1: programs that try to escape or exhaust the sandbox.

Each program is handed to `run_tests` as the "solution" of a tiny task (`add`). Every one
must get reward 0, and afterwards the host must be unchanged: a sentinel file tree hashes
the same, a secret host environment variable never shows up in the output, a listener on
127.0.0.1 saw no connection, and no process carrying the per-test label survives.
Then, per host-resource class, one sandbox launch tries every variant of the class and
reports what the kernel answered (many attacks per launch keep the corpus fast): new
namespaces, mounts, keyrings, memfd, exotic sockets, ptrace, ptys, setuid binaries;
inode and byte caps of /tmp and /dev/shm; memory of all processes together (cgroup);
host files, data and unix sockets out of sight; no keyring entry left behind.
"""

import hashlib
import os
import select
import socket
import time
import uuid

import pytest

from verifiers import sandbox as S

TESTS = "assert add(1, 2) == 3\nassert add(-4, 4) == 0\n"
REFERENCE = "def add(a, b):\n    return a + b\n"
FAST = S.Limits(wall_s=2.0, cpu_s=1, address_space_bytes=256 << 20, nproc=16,
                file_size_bytes=1 << 20, tmpfs_bytes=8 << 20, tmpfs_inodes=512,
                stdout_bytes=64 << 10, stderr_bytes=64 << 10, memory_bytes=256 << 20, pids=32)
STRAY_GRACE_S = 3.0

# Each program may use {sentinel} (a host directory), {port} (a host TCP listener on
# 127.0.0.1) and {uport} (a host UDP socket on 127.0.0.1), and {label} for child argv.
PROGRAMS = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "fork_bomb_exec": "import subprocess, sys\nwhile True:\n    try:\n        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{label}'])\n    except OSError:\n        pass\n",
    "thread_bomb": "import threading, time\nwhile True:\n    try:\n        threading.Thread(target=time.sleep, args=(60,)).start()\n    except RuntimeError:\n        pass\n",
    "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n",
    "memory_one_shot": "x = b'x' * (10 ** 11)\n",
    "memory_in_children": "import os\nfor _ in range(8):\n    if os.fork() == 0:\n        x = bytearray(200 << 20)\n        os._exit(0)\nos.wait()\n",
    "busy_loop": "while True:\n    pass\n",
    "busy_loop_in_add": "def add(a, b):\n    while True:\n        pass\n",
    "busy_children": "import os\nfor _ in range(4):\n    if os.fork() == 0:\n        while True:\n            pass\nwhile True:\n    pass\n",
    "sleep_past_timeout": "import time\ntime.sleep(60)\n",
    "sleep_in_add": "import time\ndef add(a, b):\n    time.sleep(60)\n    return a + b\n",
    "huge_stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536 + '\\n')\n",
    "huge_stderr": "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n",
    "huge_single_line": "print('z' * (50 << 20), end='')\n",
    "net_connect_loopback": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'escaped')\n",
    "net_udp_loopback": "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'escaped', ('127.0.0.1', {uport}))\nprint('sent')\n",
    "dns_localhost": "import socket\nprint(socket.getaddrinfo('localhost', {port}))\nsocket.create_connection(('localhost', {port}), timeout=1)\n",
    "dns_made_up_name": "import socket\nprint(socket.gethostbyname('scca-sandbox-probe.invalid'))\n",
    "write_sentinel": "import os\nfor p in ('{sentinel}/a.txt', '{sentinel}/new.txt'):\n    try:\n        open(p, 'w').write('pwned')\n    except OSError as e:\n        print('blocked', e)\n",
    "delete_sentinel": "import shutil\nshutil.rmtree('{sentinel}', ignore_errors=True)\nimport os\nprint(os.path.exists('{sentinel}'))\n",
    "write_system_dirs": "for p in ('/etc/scca_pwned', '/usr/scca_pwned', '/root/scca_pwned', '/work/scca_pwned', '/scca_pwned'):\n    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n    except OSError as e:\n        print('blocked', p, e)\n",
    "fill_tmp": "with open('/tmp/big', 'wb') as f:\n    while True:\n        f.write(b'\\0' * (1 << 20))\n",
    "read_environ": "import os, glob\nprint(dict(os.environ))\nfor p in ['/proc/1/environ', '/proc/self/environ'] + glob.glob('/proc/*/environ'):\n    try:\n        print(p, open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)\n",
    "read_host_files": "import glob\nfor pat in ('/proc/*/cmdline', '/work/*', '/root/*', '/home/*', '/etc/*'):\n    print(pat, glob.glob(pat)[:50])\n",
    "ctypes_system": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.system(b'echo pwned > {sentinel}/a.txt; kill -9 -1; touch /tmp/x')\n",
    "os_system_shell": "import os\nos.system('rm -rf {sentinel}; sleep 60 & echo started')\n",
    "signal_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "signal_everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "signal_init": "import os, signal\nfor s in (signal.SIGKILL, signal.SIGTERM):\n    os.kill(1, s)\n",
    "daemon_double_fork": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\nprint('parent leaves')\n",
    "background_new_session": "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{label}'], start_new_session=True)\n",
    "ptrace_parent": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())\nprint(open('/proc/%d/mem' % os.getppid(), 'rb').read(10))\n",
    "proc_parent_fds": "import os\nfor fd in (0, 1, 2):\n    print(open('/proc/%d/fd/%d' % (os.getppid(), fd), 'rb').read())\n",
    "setuid_root": "import os\nos.setuid(0)\nprint('root again')\n",
    "mount_and_chroot": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.mount(b'none', b'/usr', b'tmpfs', 0, None), ctypes.get_errno())\nimport os\nos.chroot('/tmp')\n",
    "raise_rlimits": "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n",
    "fd_exhaustion": "fs = []\nwhile True:\n    fs.append(open('/dev/null'))\n",
    "memfd_beyond_rlimit": "import os\nfd = os.memfd_create('x')\nwhile True:\n    os.write(fd, b'x' * (1 << 20))\n",
    "shm_and_tmp_fill": "import os\nfor d in ('/dev/shm', '/tmp'):\n    with open(d + '/big', 'wb') as f:\n        try:\n            while True:\n                f.write(b'x' * (1 << 20))\n        except OSError as e:\n            print(d, e)\n",
    "inode_flood": "import os\nfor d in ('/tmp', '/dev/shm'):\n    try:\n        for i in range(10 ** 6):\n            os.mkdir('%s/%d' % (d, i))\n    except OSError as e:\n        print(d, i, e)\n",
    "pipe_buffer_flood": "import os\nfor _ in range(8):\n    if os.fork() == 0:\n        ps = []\n        try:\n            while True:\n                r, w = os.pipe()\n                os.set_blocking(w, False)\n                try:\n                    while True:\n                        os.write(w, b'x' * 65536)\n                except BlockingIOError:\n                    ps.append((r, w))\n        except OSError:\n            pass\n        import time\n        time.sleep(60)\n",
    "memory_across_processes": "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        x = bytearray(200 << 20)\n        time.sleep(60)\nimport time\ntime.sleep(60)\n",
    "nested_userns_tmpfs": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000 | 0x20000), ctypes.get_errno())\nprint(libc.mount(b'none', b'/tmp', b'tmpfs', 0, b'size=100g'), ctypes.get_errno())\nwith open('/tmp/x', 'wb') as f:\n    f.write(b'x' * (1 << 30))\n",
    "keyring_entries": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nfor i in range(100):\n    libc.syscall(248, b'user', b'k%d' % i, b'x' * 1000, 1000, -4)\n",
    "socket_buffer_flood": "import socket, os, time\nfor _ in range(12):\n    if os.fork() == 0:\n        ps = []\n        try:\n            while True:\n                a, b = socket.socketpair()\n                a.setblocking(False)\n                try:\n                    while True:\n                        a.send(b'x' * 65536)\n                except BlockingIOError:\n                    ps.append((a, b))\n        except OSError:\n            time.sleep(60)\ntime.sleep(60)\n",
    "tcp_loopback_flood": "import socket, os, time\nsrv = socket.socket()\nsrv.bind(('127.0.0.1', 0))\nsrv.listen(512)\nport = srv.getsockname()[1]\nfor _ in range(8):\n    if os.fork() == 0:\n        cs = []\n        try:\n            while True:\n                c = socket.create_connection(('127.0.0.1', port))\n                c.setblocking(False)\n                try:\n                    while True:\n                        c.send(b'x' * 65536)\n                except BlockingIOError:\n                    cs.append(c)\n        except OSError:\n            time.sleep(60)\ntime.sleep(60)\n",
    "pty_pool": "import os\nfs = []\nwhile True:\n    fs.append(os.openpty())\n",
    "setuid_mount": "import subprocess\nprint(subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp'], capture_output=True))\n",
}


def _tree_hash(root):
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(d, name)
            h.update(p.encode() + b"\0" + open(p, "rb").read() + b"\0")
    return h.hexdigest()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A sentinel tree, a host secret, TCP + UDP listeners on 127.0.0.1 and a label."""
    sentinel = tmp_path / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "a.txt").write_text("keep me")
    (sentinel / "sub" / "b.txt").write_text("and me")
    for p in (tmp_path, sentinel, sentinel / "sub"):
        p.chmod(0o777)  # only the sandbox, not file permissions, protects it
    secret = "scca-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("SCCA_TEST_SECRET", secret)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    env = {"sentinel": str(sentinel), "port": tcp.getsockname()[1],
           "uport": udp.getsockname()[1], "label": "scca-test-" + uuid.uuid4().hex,
           "secret": secret, "hash": _tree_hash(sentinel), "tcp": tcp, "udp": udp}
    yield env
    tcp.close()
    udp.close()


def _assert_host_unchanged(host, result):
    sentinel = host["sentinel"]
    assert _tree_hash(sentinel) == host["hash"], "sentinel tree changed"
    out = result.get("stdout_tail", "") + result["stderr_tail"]
    assert host["secret"] not in out
    readable, _, _ = select.select([host["tcp"], host["udp"]], [], [], 0)
    assert readable == [], "a sandboxed program reached a host socket"
    deadline = time.monotonic() + STRAY_GRACE_S
    while S.stray_processes(host["label"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert S.stray_processes(host["label"]) == []


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_is_contained(name, host):
    code = PROGRAMS[name].format(**{k: host[k] for k in ("sentinel", "port", "uport", "label")})
    r = S.run_tests(code, TESTS, FAST, label=host["label"])
    assert r["reward"] == 0.0, r
    assert r["mode"] == S.sandbox_mode()
    _assert_host_unchanged(host, r)


def test_secret_is_not_in_full_output(host):
    """The whole (uncapped-by-tail) output of an environment dump has no host secret."""
    code = PROGRAMS["read_environ"].format(**{k: host[k] for k in ("sentinel", "port", "uport", "label")})
    r = S.run_python(code, limits=FAST, label=host["label"])
    assert "SCCA_TEST_SECRET" not in r.stdout + r.stderr
    assert host["secret"] not in r.stdout + r.stderr
    assert "/proc/1/environ" in r.stdout  # the probe really ran


def test_limits_are_reported(host):
    r = S.run_python(PROGRAMS["sleep_past_timeout"], limits=FAST, label=host["label"])
    assert r.timed_out and 1.9 < r.wall_s < 4.0
    r = S.run_python(PROGRAMS["huge_stdout"], limits=FAST, label=host["label"])
    assert r.truncated and len(r.stdout) <= FAST.stdout_bytes
    r = S.run_python(PROGRAMS["busy_loop"], limits=FAST, label=host["label"])
    assert r.returncode != 0 and not r.truncated
    _assert_host_unchanged(host, {"stderr_tail": ""})


def test_reference_still_passes_after_the_corpus(host):
    r = S.run_tests(REFERENCE, TESTS, label=host["label"])
    assert r["reward"] == 1.0, r
    _assert_host_unchanged(host, r)


ESCAPE_PROBE = r"""
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def call(name, f):
    try:
        rc = f()
        out[name] = "ok" if rc in (None, 0) or (isinstance(rc, int) and rc > 0) else "errno %d" % ctypes.get_errno()
    except OSError as e:
        out[name] = "errno %d" % e.errno
call("unshare_user", lambda: libc.unshare(0x10000000))
call("unshare_mount", lambda: libc.unshare(0x20000))
call("clone_newuser", lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0))
call("clone3", lambda: libc.syscall(435, 0, 0))
call("mount_tmpfs", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
call("add_key", lambda: libc.syscall(248, b"user", b"k", b"v", 1, -4))
call("keyctl", lambda: libc.syscall(250, 0, -4, 0, 0, 0))
call("memfd", lambda: os.memfd_create("x"))
call("ptrace", lambda: libc.ptrace(16, os.getppid(), 0, 0))
call("io_uring", lambda: libc.syscall(425, 1, ctypes.create_string_buffer(120)))
call("bpf", lambda: libc.syscall(321, 0, 0, 0))
call("userfaultfd", lambda: libc.syscall(323, 0))
call("perf_event_open", lambda: libc.syscall(298, 0, 0, -1, -1, 0))
for fam, name in ((40, "vsock"), (16, "netlink"), (17, "packet"), (38, "alg"), (0x10000001, "unix_high_bits")):
    call("socket_" + name, lambda: socket.socket(fam, socket.SOCK_STREAM if fam != 16 else socket.SOCK_RAW).close())
call("socket_unix", lambda: socket.socket(socket.AF_UNIX).close())
call("socket_inet", lambda: socket.socket().close())
call("openpty", lambda: [os.close(x) for x in os.openpty()] and None)
out["dev"] = sorted(os.listdir("/dev"))
out["nonewprivs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
n = 0
try:
    while n < 100000:
        open("/tmp/f%d" % n, "w").close()
        n += 1
except OSError as e:
    out["tmp_inodes"] = [n, e.errno]
print(json.dumps(out))
"""


def test_kernel_refuses_escape_syscalls():
    """One launch, every escape route of the class: each must come back refused."""
    if not S.hardening()["complete"]:
        pytest.skip(f"sandbox incomplete here: {S.hardening()['missing']}")
    r = S.run_python(ESCAPE_PROBE, limits=FAST)
    out = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    for name in ("unshare_user", "unshare_mount", "clone_newuser", "mount_tmpfs", "add_key",
                 "keyctl", "memfd", "ptrace", "io_uring", "bpf", "userfaultfd", "perf_event_open",
                 "socket_vsock", "socket_netlink", "socket_packet", "socket_alg",
                 "socket_unix_high_bits", "openpty"):
        assert out[name].startswith("errno"), (name, out[name])
    assert out["clone3"] == "errno 38"                     # ENOSYS: glibc falls back to clone
    assert out["socket_unix"] == "ok" and out["socket_inet"] == "ok"
    assert out["dev"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout",
                          "urandom", "zero"]
    assert out["nonewprivs"] == "1"
    assert out["tmp_inodes"][0] < FAST.tmpfs_inodes and out["tmp_inodes"][1] == 28   # ENOSPC


def test_cgroup_bounds_memory_of_all_processes():
    """Eight children of 200 MB each stay under RLIMIT_AS one by one; together they
    exceed the run's cgroup and the kernel's OOM killer ends them, not host processes."""
    if not S.hardening()["cgroup"]:
        pytest.skip("no writable cgroup here")
    r = S.run_python(PROGRAMS["memory_across_processes"], limits=FAST)
    assert r.oom_killed, r


def test_no_keyring_residue():
    def worker_key_users():
        with open("/proc/key-users") as f:
            return [l for l in f if S.WORKER_UID_BASE <= int(l.split(":")[0]) < S.WORKER_UID_BASE + S.WORKER_UID_SPAN]
    before = worker_key_users()
    for _ in range(3):
        S.run_python(PROGRAMS["keyring_entries"], limits=FAST)
    assert worker_key_users() == before


def test_host_files_data_and_sockets_are_out_of_sight(tmp_path):
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    secret = "expected-" + uuid.uuid4().hex
    (data / "train.jsonl").write_text('{"prompt": "p", "tests": "assert f() == %s"}' % secret)
    for p in (tmp_path, tmp_path / "run", data, data / "train.jsonl"):
        p.chmod(0o777)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "host.sock"))
    srv.listen(1)
    code = (f"import glob, socket, os\nfor p in glob.glob('{tmp_path}/**', recursive=True) + ['{data}/train.jsonl']:\n"
            "    try:\n        print(open(p).read())\n    except OSError as e:\n        print(p, e)\n"
            f"s = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('{tmp_path}/host.sock')\n    print('CONNECTED')\n"
            "except OSError as e:\n    print('refused', e)\n")
    try:
        r = S.run_python(code, limits=FAST)
        assert secret not in r.stdout + r.stderr and "CONNECTED" not in r.stdout, r
        assert "refused" in r.stdout
        assert select.select([srv], [], [], 0)[0] == []
    finally:
        srv.close()
