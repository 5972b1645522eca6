"""The parent side of the python-grader sandbox: one worker process per batch, JSON lines over pipes.

`Sandbox.run` starts `sandbox_worker.py` (which confines itself: see its docstring and `confine.py`) in a
fresh temporary directory, waits for it to load the source, then sends one sample at a time and waits
at most `timeout_seconds` of wall time for each answer. A sample that runs over is reported as "timed out
after Ns" and its worker is killed with its whole process group; a worker that dies (CPU limit, crash,
`os._exit`) fails its sample with the cause. Either way a fresh worker grades the rest of the batch. A
source that fails or hangs while loading fails the whole batch at once. The worker's temp dir is removed
when it stops. The interpreter's site-packages are importable by user code (read-only); nothing else of
the parent is: no environment variables, no open files, no working directory.

What holds where: the audit hook alone is not a security boundary (PEP 578 says so; hand-made bytecode,
e.g. through `code.replace`, which Python 3.11 does not audit, can get around it). Behind it, Landlock and
seccomp (when the kernel has them; `Sandbox.layers` tells) still refuse network, processes, signals and
writes outside the temp dir, and the rlimits bound memory, CPU and file size. Reading files the process
can read is then possible. Disk use inside the temp dir is bounded per file and by the wall time only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("sandbox_worker.py")
STARTUP_SECONDS = 5.0  # on top of timeout_seconds, for the interpreter to start on a loaded machine
MAX_REPLY = 1 << 20
SIGNALS = {
    signal.SIGXCPU: "went over its CPU time limit",
    signal.SIGKILL: "was killed (the hard CPU limit, or out of memory)",
    signal.SIGSYS: "made a forbidden system call",
    signal.SIGSEGV: "crashed (segmentation fault)",
}


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float
    memory_mib: int


@dataclass(frozen=True)
class Outcome:
    score: float | None
    error: str | None = None


class WorkerGoneError(RuntimeError):
    """The worker stopped answering: it died, or it ran past the deadline (then it has been killed)."""


class Sandbox:
    """Runs `source`'s grade(sample, item) for batches of samples. `audit_hook` and `kernel` switch the
    two confinement layers inside the worker; both are on for graders (tests turn one off to show the
    other holds alone)."""

    def __init__(
        self,
        source: str,
        limits: Limits,
        scratch: Path | None = None,
        *,
        audit_hook: bool = True,
        kernel: bool = True,
    ) -> None:
        self.source = source
        self.limits = limits
        self.scratch = scratch
        self.audit_hook = audit_hook
        self.kernel = kernel
        self.layers: tuple[str, ...] = ()  # the kernel layers the last worker installed
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)

    def run(self, cases: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while len(outcomes) < len(cases):
            worker = _Worker(self, cpu_seconds=self._cpu_budget(len(cases) - len(outcomes)))
            try:
                try:
                    loaded = worker.ask(worker.settings, self.limits.timeout_seconds + STARTUP_SECONDS)
                except WorkerGoneError as gone:  # the same would happen again: fail the rest of the batch
                    loaded = {"error": f"{gone} while loading the source"}
                if "error" in loaded or loaded.get("ready") is not True:
                    error = str(loaded.get("error", f"sent {loaded!r} instead of ready"))
                    outcomes += [Outcome(None, f"python grader {error}")] * (len(cases) - len(outcomes))
                    break
                self.layers = tuple(loaded.get("layers", ()))
                for sample, item in cases[len(outcomes) :]:
                    outcomes.append(
                        _outcome(worker.ask({"sample": sample, "item": item}, self.limits.timeout_seconds))
                    )
            except WorkerGoneError as gone:
                outcomes.append(Outcome(None, f"python grader {gone}"))
            finally:
                worker.stop()
        return outcomes

    def _cpu_budget(self, samples: int) -> int:
        """RLIMIT_CPU for a worker: a backstop behind the per-sample wall-time limit, never before it."""
        return int(self.limits.timeout_seconds * (samples + 1) + STARTUP_SECONDS)


def _outcome(reply: Mapping[str, Any]) -> Outcome:
    score = reply.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return Outcome(float(score))
    return Outcome(None, f"python grader {reply.get('error', 'sent an unreadable reply')}")


class _Worker:
    def __init__(self, sandbox: Sandbox, cpu_seconds: int) -> None:
        self.timeout = sandbox.limits.timeout_seconds
        self.directory = Path(tempfile.mkdtemp(prefix="python-grader-", dir=sandbox.scratch))
        paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", str(WORKER), str(self.directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            env={"HOME": str(self.directory), "TMPDIR": str(self.directory), "LC_ALL": "C.UTF-8"},
            start_new_session=True,  # its own process group: a timeout kills everything it started
        )
        self.buffer = b""
        self.stopped = False
        self.settings = {  # the first line the worker reads
            "source": sandbox.source,
            "memory_mib": sandbox.limits.memory_mib,
            "cpu_seconds": cpu_seconds,
            "paths": paths,
            "audit_hook": sandbox.audit_hook,
            "kernel": sandbox.kernel,
        }

    def ask(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Send `request` and return the worker's JSON answer, waiting at most `timeout` seconds."""
        self._send(request)
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            poller = select.poll()  # not select(): a training process may hold more than 1024 fds
            poller.register(stdout.fileno(), select.POLLIN)
            if not poller.poll(max(0, int(left * 1000))):
                self.stop()
                raise WorkerGoneError(f"timed out after {self.timeout:g}s")
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                raise WorkerGoneError(self._death())
            self.buffer += chunk
            if len(self.buffer) > MAX_REPLY:
                raise WorkerGoneError(f"sent a reply over {MAX_REPLY} bytes")
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            return {"error": "sent an unreadable reply"}
        return reply if isinstance(reply, dict) else {"error": "sent an unreadable reply"}

    def _send(self, message: Mapping[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message, default=str).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerGoneError(self._death()) from err

    def _death(self) -> str:
        """Why the worker is gone, read without reaping it (its pid stays reserved until `stop`)."""
        deadline = time.monotonic() + 5
        while (info := os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)) is None:
            if time.monotonic() > deadline:
                self.stop()
                return "worker stopped answering"
            time.sleep(0.01)
        if info.si_code == os.CLD_EXITED:
            return f"worker exited with status {info.si_status}"
        sig = signal.Signals(info.si_status)
        return f"worker {SIGNALS.get(sig, 'was killed')} ({sig.name})"

    def stop(self) -> None:
        """Kill the worker's process group (anything it started goes with it), reap it, remove its temp dir.

        The group is killed before the worker is reaped, so its pid cannot have been reused by then."""
        if self.stopped:
            return
        self.stopped = True
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
