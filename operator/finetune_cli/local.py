"""Local trainer processes for `finetune run`: start a trainer command on a contract file, report its
failure with the end of its log, and draw training progress from the run's progress.json."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from finetune_api.run_layout import ProgressReport
from finetune_api.trainer_config import RunContract

POLL_SECONDS = 2.0


def start(
    command: str, contract: RunContract, config_file: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """`python -m finetune_trainer COMMAND --config FILE`, with `contract` written to FILE first."""
    config_file.write_text(contract.model_dump_json(by_alias=True, indent=2))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer", command, "--config", str(config_file), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def finish(process: subprocess.Popen[bytes], what: str, log: Path) -> int:
    """The process's exit code; on failure, the end of its log on stderr."""
    code = process.wait()
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"\n{what} failed (exit {code}); the end of {log}:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
    return code


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
    started, shown = time.monotonic(), ""
    tty = sys.stdout.isatty()
    while process.poll() is None:
        time.sleep(POLL_SECONDS)
        try:
            report = ProgressReport.model_validate_json(progress.read_bytes())
        except (OSError, ValidationError):
            continue
        line = bar(report, started)
        if tty:
            print("\r" + line, end="", flush=True)
        elif report.updated_at.isoformat() != shown:  # off a TTY, one line per report
            print(line, flush=True)
        shown = report.updated_at.isoformat()
    if tty and shown:
        print()
