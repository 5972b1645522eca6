"""Kernel-enforced limits for the python-grader worker (`sandbox_worker.py`), applied by the worker to
itself before it loads user code. Standard library only: the worker runs in an isolated interpreter.

- Landlock (Linux >= 5.13, when the kernel enables it): nothing outside the worker's temporary directory
  can be created, written, truncated, renamed or removed; with Landlock ABI >= 4 no TCP bind or connect;
  with ABI >= 6 no signal to a process outside the worker. Reading is left to the audit hook.
- seccomp-bpf (x86_64 and aarch64): no socket/connect/bind/io_uring, no fork/vfork/clone of a process
  (threads are allowed) and no execve, no kill/tkill/tgkill except to itself, no setrlimit/prlimit (the
  limits stay as set), no ptrace, namespaces, mounts, keys, bpf or module loading. A refused call fails
  with EPERM; a syscall from a foreign ABI (i386, x32) kills the worker.

Both are best-effort: `apply` returns the layers it installed, and the worker runs without a layer the
kernel lacks (rlimits and the audit hook always apply). Both hold for root too, unlike RLIMIT_NPROC.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000

# Landlock (include/uapi/linux/landlock.h); the three syscalls share numbers on every architecture.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_WRITE_V1 = (1 << 1) | sum(1 << bit for bit in range(4, 13))  # WRITE_FILE, REMOVE_DIR/FILE, MAKE_*
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

# seccomp-bpf. Syscall numbers per machine (x86_64, aarch64); None where the machine has no such call.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
MACHINES = ("x86_64", "aarch64")
# fmt: off
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "socket": (41, 198),        "connect": (42, 203),          "bind": (49, 200),
    "clone": (56, 220),         "fork": (57, None),            "vfork": (58, None),
    "execve": (59, 221),        "execveat": (322, 281),        "ptrace": (101, 117),
    "kill": (62, 129),          "tkill": (200, 130),           "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    "setrlimit": (160, 164),    "prlimit64": (302, 261),       "unshare": (272, 97),
    "setns": (308, 268),        "mount": (165, 40),            "umount2": (166, 39),
    "pivot_root": (155, 41),    "chroot": (161, 51),           "init_module": (175, 105),
    "finit_module": (313, 273), "kexec_load": (246, 104),      "add_key": (248, 217),
    "request_key": (249, 218),  "keyctl": (250, 219),          "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_send_signal": (424, 424), "pidfd_open": (434, 434),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
}
# fmt: on
CLONE3 = 435  # the same on both machines
SIGNAL_SELF = ("kill", "tkill", "tgkill")  # allowed when the first argument is the worker's own pid

LD_ABS_W, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
X32_BIT = 0x40000000


def apply(scratch: str) -> list[str]:
    """Confine this process; the names of the layers installed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return []
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return []
    return _landlock(libc, scratch) + _seccomp(libc)


def _landlock(libc: ctypes.CDLL, scratch: str) -> list[str]:
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return []
    fs = FS_WRITE_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    if ruleset < 0:
        return []
    try:
        beneath = os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rule = struct.pack("=Qi", fs, beneath)
            if libc.syscall(LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
                return []
        finally:
            os.close(beneath)
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return []
    finally:
        os.close(ruleset)
    return ["landlock-fs"] + (["landlock-net"] if net else []) + (["landlock-signal"] if scoped else [])


def _seccomp(libc: ctypes.CDLL) -> list[str]:
    machine = platform.machine()
    if machine not in MACHINES:
        return []
    column = MACHINES.index(machine)
    table = {name: numbers[column] for name, numbers in SYSCALLS.items()}
    denied = sorted(
        nr for name, nr in table.items() if nr is not None and name not in (*SIGNAL_SELF, "clone")
    )
    program = [_ld(4), _jump(JEQ, AUDIT_ARCH[machine], 1, 0), _ret(RET_KILL_PROCESS), _ld(0)]
    if machine == "x86_64":
        program += [_jump(JGE, X32_BIT, 0, 1), _ret(RET_KILL_PROCESS)]
    for nr in denied:
        program += [_jump(JEQ, nr, 0, 1), _ret(RET_ERRNO | errno.EPERM)]
    program += [_jump(JEQ, CLONE3, 0, 1), _ret(RET_ERRNO | errno.ENOSYS)]  # the C library falls back to clone
    program += _only_if(table["clone"], JSET, CLONE_THREAD)
    for name in SIGNAL_SELF:
        program += _only_if(table[name], JEQ, os.getpid())
    program.append(_ret(RET_ALLOW))
    code = b"".join(program)
    filters = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HP", len(program), ctypes.addressof(filters))  # struct sock_fprog
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(prog), 0, 0) != 0:
        return []
    return ["seccomp"]


def _only_if(nr: int | None, test: int, value: int) -> list[bytes]:
    """For syscall `nr`: allowed when its first argument passes `test` against `value`, else EPERM."""
    if nr is None:
        return []
    return [
        _jump(JEQ, nr, 0, 4),
        _ld(16),  # the low 32 bits of args[0]
        _jump(test, value, 0, 1),
        _ret(RET_ALLOW),
        _ret(RET_ERRNO | errno.EPERM),
    ]


def _ld(offset: int) -> bytes:
    return struct.pack("=HBBI", LD_ABS_W, 0, 0, offset)


def _jump(op: int, value: int, if_true: int, if_false: int) -> bytes:
    return struct.pack("=HBBI", op, if_true, if_false, value)


def _ret(value: int) -> bytes:
    return struct.pack("=HBBI", RET, 0, 0, value)
