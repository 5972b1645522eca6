"""The python-grader worker: a separate, isolated interpreter that runs user code one sample at a time.

Started by `sandbox.py` as `python -I -S -B -X utf8 sandbox_worker.py <temp dir>` with an empty
environment and the temp dir as cwd. Standard library only. Before any user code runs it:

1. moves the protocol off fds 0/1 (user `print()` and `input()` go to /dev/null, so they cannot corrupt it);
2. reads its settings (first stdin line: source, limits, import paths);
3. sets rlimits (before seccomp, which then refuses to change them): RLIMIT_AS (memory_mib), RLIMIT_CPU,
   RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, and RLIMIT_NPROC=0 when seccomp is missing (it binds
   non-root users only);
4. confines itself in the kernel where it can (`confine.py`: Landlock, seccomp);
5. installs an audit hook (it cannot be removed) refusing: sockets; subprocess, fork, exec, spawn,
   os.system and signals to other processes; native code through ctypes (importing it is allowed), writing
   native libraries that import could load, code objects built by hand, gc walks;
   changing rlimits; opening for write, creating, removing, renaming or changing files outside the temp
   dir; reading or listing files outside the temp dir and the interpreter's own library folders.

Then it executes the source, replies `{"ready": true, "layers": [...]}` (or `{"error": ...}` when loading
fails), and answers each request line `{"sample": ..., "item": ...}` with `{"score": x}` or
`{"error": "raised ValueError: ... (line 3)"}`.
"""

import importlib.util
import json
import math
import numbers
import os
import resource
import signal
import sys
from typing import Any

REFUSED_EVENTS = {
    "os.system": "process creation",
    "os.fork": "process creation",
    "os.forkpty": "process creation",
    "os.exec": "process creation",
    "os.posix_spawn": "process creation",
    "subprocess.Popen": "process creation",
    "os.kill": "signalling another process",
    "os.killpg": "signalling another process",
    "signal.pthread_kill": "signalling another process",
    "resource.setrlimit": "changing resource limits",
    "resource.prlimit": "changing resource limits",
    "code.__new__": "building code objects",
    "gc.get_objects": "walking the garbage collector",
    "gc.get_referrers": "walking the garbage collector",
    "gc.get_referents": "walking the garbage collector",
    "sqlite3.connect": "opening databases",
    "cpython.PyInterpreterState_New": "starting sub-interpreters",
    "os.link": "creating links",
    "os.symlink": "creating links",
}
REFUSED_PREFIXES = {"socket.": "network access"}
NATIVE_EVENTS = {  # ctypes may be imported (numpy does) but not used to reach native code or memory
    "ctypes.dlsym",
    "ctypes.dlsym/handle",
    "ctypes.call_function",
    "ctypes.cdata",
    "ctypes.cdata/buffer",
    "ctypes.string_at",
    "ctypes.wstring_at",
    "ctypes.create_string_buffer",
    "ctypes.create_unicode_buffer",
}
NATIVE_SUFFIXES = (".so", ".pyd", ".dylib")  # no native library may be written for import to load
REFUSED_IMPORTS = {
    "_posixsubprocess": "process creation",
    "_xxsubinterpreters": "starting sub-interpreters",
    "_testcapi": "interpreter internals",
    "_testinternalcapi": "interpreter internals",
    "_posixshmem": "shared memory",
    "_multiprocessing": "process creation",
}
CHANGES = {  # events that change the file named by their first argument
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.utime",
    "os.truncate",
    "os.setxattr",
    "os.removexattr",
    "os.chflags",
    "os.lchflags",
    "shutil.rmtree",
}
READ_EXTRA = (
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/usr/share/zoneinfo",
    "/etc/localtime",
)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
SOURCE_NAME = "<grader>"


def main() -> None:
    scratch = os.path.realpath(sys.argv[1])
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    settings = json.loads(requests.readline())
    sys.path.extend(settings["paths"])
    _limit(settings)  # before seccomp, which refuses setrlimit
    layers = _confine(scratch) if settings["kernel"] else []
    if "seccomp" not in layers:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork for non-root users at least
    if settings["audit_hook"]:
        _install_hook(scratch, (scratch, *sys.path, sys.prefix, sys.base_prefix, *READ_EXTRA))
    namespace = {"__name__": "grader", "__builtins__": __builtins__}
    try:
        exec(compile(settings["source"], SOURCE_NAME, "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the source defines no function grade(sample, item)")
    except BaseException as exc:  # anything user code raises is reported
        reply({"error": _describe(exc) + " while loading the source"})
        return
    reply({"ready": True, "layers": layers})
    for line in requests:
        request = json.loads(line)
        try:
            value = grade(request["sample"], request["item"])
        except BaseException as exc:
            reply({"error": _describe(exc)})
            continue
        reply(_score(value))


def _confine(scratch: str) -> list[str]:
    """Kernel layers from confine.py (beside this file), loaded before the audit hook forbids ctypes,
    then dropped from sys.modules so user code cannot reuse the loaded ctypes."""
    spec = importlib.util.spec_from_file_location(
        "confine", os.path.join(os.path.dirname(__file__), "confine.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return list(module.apply(scratch))
    finally:
        for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
            del sys.modules[name]


def _limit(settings: dict[str, Any]) -> None:
    memory = settings["memory_mib"] << 20
    cpu = settings["cpu_seconds"]
    limits = [
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
        (resource.RLIMIT_FSIZE, memory, memory),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for kind, soft, hard in limits:
        resource.setrlimit(kind, (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing


def _install_hook(scratch: str, readable: tuple[str, ...]) -> None:
    """The hook's only state is this closure; nothing else refers to the function once it is installed."""
    realpath, fsdecode, join, sep = os.path.realpath, os.fsdecode, os.path.join, os.sep
    write_root = realpath(scratch)
    read_roots = tuple(sorted({realpath(p) for p in readable if p}))

    def inside(path: object, roots: tuple[str, ...]) -> bool:
        if isinstance(path, int):
            return False
        full = realpath(join(os.getcwd(), fsdecode(path)))  # type: ignore[arg-type]
        return any(full == root or full.startswith(root.rstrip(sep) + sep) for root in roots)

    def native(path: object) -> bool:
        if isinstance(path, int):
            return False
        name = os.path.basename(fsdecode(path))  # type: ignore[arg-type]
        return name.endswith(NATIVE_SUFFIXES) or ".so." in name

    def refuse(what: str, event: str) -> None:
        raise PermissionError(f"{what} is not allowed in a python grader ({event})")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in REFUSED_EVENTS:
            refuse(REFUSED_EVENTS[event], event)
        for prefix, what in REFUSED_PREFIXES.items():
            if event.startswith(prefix):
                refuse(what, event)
        if event in NATIVE_EVENTS or (event == "ctypes.dlopen" and args[0] is not None):
            refuse("calling native code", event)
        if event == "import" and args[0] in REFUSED_IMPORTS:
            refuse(f"importing {args[0]} ({REFUSED_IMPORTS[args[0]]})", event)
        elif event == "open":
            path, mode, flags = args
            writing = flags & WRITE_FLAGS if isinstance(flags, int) else any(c in str(mode) for c in "wax+")
            if writing and not inside(path, (write_root,)):
                refuse(f"writing {path!r} outside the grader's temporary directory", event)
            if writing and native(path):
                refuse(f"writing the native library {path!r}", event)
            if not writing and not isinstance(path, int) and not inside(path, read_roots):
                refuse(f"reading {path!r}", event)
        elif event in ("os.listdir", "os.scandir"):
            path = "." if args[0] is None else args[0]
            if not isinstance(path, int) and not inside(path, read_roots):
                refuse(f"listing {path!r}", event)
        elif event in CHANGES:
            if not inside(args[0], (write_root,)):
                refuse(f"changing {args[0]!r} outside the grader's temporary directory", event)
        elif event == "os.rename":
            if not (inside(args[0], (write_root,)) and inside(args[1], (write_root,))):
                refuse(f"renaming {args[0]!r} outside the grader's temporary directory", event)
            if native(args[1]):
                refuse(f"renaming to the native library {args[1]!r}", event)

    sys.addaudithook(hook)


def _score(value: object) -> dict[str, Any]:
    if isinstance(value, numbers.Real):
        try:
            score = float(value)
        except (OverflowError, ValueError) as exc:
            return {"error": f"returned {value!r}, which is not a float ({exc})"}
        if math.isfinite(score):
            return {"score": score}
        return {"error": f"returned {score}; a score must be a finite number"}
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return {"error": f"returned {type(value).__name__} {shown}; grade() must return a number or bool"}


def _describe(exc: BaseException) -> str:
    """`raised ValueError: message (line 3)`, the line being the last one of the user's source involved."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == SOURCE_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    message = str(exc)
    message = message if len(message) <= 500 else message[:497] + "..."
    text = f"raised {type(exc).__name__}" + (f": {message}" if message else "")
    return text + (f" (line {line})" if line is not None else "")


if __name__ == "__main__":
    main()
