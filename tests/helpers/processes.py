"""Real servers started by the test suite (control plane, S3): ports, spawning, readiness, teardown.

Every process gets its own process group and is asked to die with its parent (PR_SET_PDEATHSIG), so
nothing outlives the test session, not even a killed pytest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 90.0


class ProcessError(RuntimeError):
    """A server the tests started did not come up, or died."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise ProcessError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)


def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    """Start `argv` with its output in `workdir/<name>.log`."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - setsid and the death signal, nothing else
            cwd=workdir,
            env=env,
        )
    return Process(name, popen, log)


def wait_http(url: str, process: Process, context: ssl.SSLContext | None = None) -> None:
    """Poll `url` until it answers 200, failing early (with the log) if `process` dies."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError as err:
            last = str(err)
        time.sleep(0.2)
    raise ProcessError(f"{process.name} not ready at {url} after {READY_TIMEOUT:.0f}s: {last}")


@contextlib.contextmanager
def workdir(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given` (created if missing, kept), or a temporary directory removed afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
