"""Local trainer processes for `finetune run`: start a trainer command on a contract file, report its
failure with the end of its log, and draw training progress from the run's progress.json (first the
trainer's expected time, then a bar). Also what this machine is, as the "auto" rule sees it (`device`).

Stopping: each trainer command runs in a process group (and session) of its own, so a terminal's Ctrl-C
reaches `finetune run` only, and `finetune run` decides what the trainer gets. Inside `stopping_on_signals()`,
SIGINT or SIGTERM is forwarded to the running command's whole group (`train` saves a checkpoint at the end
of its step and exits; the other commands end at once); `wait` gives the group `GRACE_SECONDS`, then
SIGKILLs it, grandchildren (dataloader workers, compile workers) included, and raises `StopSignalError`.
A second signal SIGKILLs the group at once. No command is started once a signal has arrived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from finetune_api.device import Device
from finetune_api.run_layout import ProgressReport, duration
from finetune_api.trainer_config import RunContract

POLL_SECONDS = 2.0
GRACE_SECONDS = 30.0  # as long as Kubernetes gives a pod after SIGTERM, by default
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignalError(Exception):
    """`finetune run` received `signum`: the trainer was stopped; exit with `exit_code`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Signals:
    """The signal that asked `finetune run` to stop, and the command running when it came."""

    received: int | None = None
    running: subprocess.Popen[bytes] | None = None
    killed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            if self.running is not None:
                _signal_group(self.running, signum)
        elif self.running is not None and not self.killed:  # asked twice: no more waiting
            self.killed = True
            _signal_group(self.running, signal.SIGKILL)

    def check(self) -> None:
        if self.received is not None:
            raise StopSignalError(self.received)


_signals = _Signals()


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the trainer (see the module docstring) for the duration of the block."""
    global _signals  # noqa: PLW0603 - the one handler state of this process
    _signals = _Signals()
    previous = {signum: signal.signal(signum, _signals.handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signum)


def start(
    command: str, contract: RunContract, config_file: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """`python -m finetune_trainer COMMAND --config FILE`, with `contract` written to FILE first, in a
    process group of its own. Raises `StopSignalError` instead once a signal has arrived."""
    _signals.check()
    config_file.write_text(contract.model_dump_json(by_alias=True, indent=2))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer", command, "--config", str(config_file), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _signals.running = process
    if _signals.received is not None:  # arrived while the process was being started
        _signal_group(process, _signals.received)
    return process


def wait(process: subprocess.Popen[bytes], timeout: float | None = None) -> int | None:
    """The process's exit code, or None while it still runs after `timeout` seconds. Once a signal has
    arrived, `stop` it and raise `StopSignalError`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while _signals.received is None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=0.5 if left is None else min(0.5, left))
            _signal_group(process, signal.SIGKILL)  # what it left behind in its group, if anything
            return code
    raise stop(process)


def stop(process: subprocess.Popen[bytes]) -> StopSignalError:
    """After a signal (already forwarded to the group): wait up to `GRACE_SECONDS` for the command to
    exit, SIGKILL whatever is left of its group; the error to raise."""
    assert _signals.received is not None
    grace = time.monotonic() + GRACE_SECONDS
    while process.poll() is None and time.monotonic() < grace and not _signals.killed:
        time.sleep(0.1)
    _signal_group(process, signal.SIGKILL)  # the leader past its grace, or what it left behind
    process.wait()
    _signals.running = None
    return StopSignalError(_signals.received)


def finish(process: subprocess.Popen[bytes], what: str, log: Path) -> int:
    """The process's exit code; on failure, the end of its log on stderr."""
    code = wait(process)
    assert code is not None  # no timeout: the process has exited
    _signals.running = None
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"\n{what} failed (exit {code}); the end of {log}:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
    return code


def device() -> Device:
    """This machine as `finetune run` trains on it, for the "auto" rule: one trainer process, so one
    device: the first CUDA GPU torch sees (its memory and name), else the CPU (also when torch is not
    installed here: the trainer commands would fail on their own)."""
    try:
        import torch  # noqa: PLC0415 - seconds to import; only `finetune run` needs it, once
    except ImportError:
        return Device.cpu()
    if not torch.cuda.is_available():
        return Device.cpu()
    properties = torch.cuda.get_device_properties(0)
    return Device.gpu(1, round(properties.total_memory / 2**30, 1), properties.name)


def expected(report: ProgressReport) -> str | None:
    """The trainer's estimate, announced once before the first step: None until progress.json has it."""
    if report.expected_seconds is None:
        return None
    return (
        f"expected: {report.total_steps - report.step} optimizer steps, about "
        f"{duration(report.expected_seconds)} (the trainer's estimate before its first step; the eta below "
        "follows the measured rate)"
    )


def bar(report: ProgressReport, started: float) -> str:
    width = 30
    done = int(width * report.step / report.total_steps)
    parts = [f"[{'#' * done}{'.' * (width - done)}] step {report.step}/{report.total_steps}"]
    if report.loss is not None:
        parts.append(f"loss {report.loss:.4f}")
    if report.eval_loss is not None:
        parts.append(f"eval {report.eval_loss:.4f}")
    if report.tokens_per_second:
        parts.append(f"{report.tokens_per_second:.0f} tok/s")
    elapsed = time.monotonic() - started
    if report.step:
        parts.append(f"eta {max(0.0, elapsed / report.step * (report.total_steps - report.step)):.0f}s")
    return "  ".join(parts)


def watch(process: subprocess.Popen[bytes], progress: Path) -> None:
    """Draw the progress bar from `progress` while training runs (one line per update off a TTY)."""
    started, shown, announced = time.monotonic(), "", False
    tty = sys.stdout.isatty()
    while wait(process, POLL_SECONDS) is None:
        try:
            report = ProgressReport.model_validate_json(progress.read_bytes())
        except (OSError, ValidationError):
            continue
        estimate = None if announced else expected(report)
        if estimate is not None:
            print(("\n" if tty and shown else "") + estimate, flush=True)
            announced = True
        line = bar(report, started)
        if tty:
            print("\r" + line, end="", flush=True)
        elif report.updated_at.isoformat() != shown:  # off a TTY, one line per report
            print(line, flush=True)
        shown = report.updated_at.isoformat()
    if tty and shown:
        print()
