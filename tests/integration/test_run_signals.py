"""`finetune run` stopped by SIGINT or SIGTERM while it trains a tiny model: the trainer, in a process group
of its own, gets the signal, saves a complete checkpoint at the end of its step and exits; `finetune run`
exits 128 + signal and leaves no process of that group behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from finetune_api.run_layout import COMPLETE_MARKER, CheckpointMarker, ProgressReport
from helpers.datagen import chat_rows, jsonl


def manifest(tiny: Path, data: Path) -> dict[str, object]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "stopped"},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": str(tiny)},
            "datasets": {"training": {"uri": str(data)}},
            # far more steps than the test waits for: only the signal ends this run
            "hyperparameters": {"epochs": 100, "batchSize": 1, "learningRate": 0.005, "maxSeqLength": 64},
            "checkpointing": {"saveSteps": 1000, "keepLast": 2},
            "storage": {"bucket": "finetune-staging"},
        },
    }


def stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, session) of a live process, None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[3])


def group_members(group: int) -> list[int]:
    """Live processes whose process group or session is `group`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ids := stat(int(entry.name))) and group in ids[1:]:
            found.append(int(entry.name))
    return found


def trainer_of(cli: subprocess.Popen[bytes]) -> int | None:
    """The pid of `finetune run`'s `train` child, once it runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ids := stat(int(entry.name))) and ids[0] == cli.pid:
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv:
                return int(entry.name)
    return None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_trainer_after_it_saves(tiny: Path, tmp_path: Path, signum: int) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(chat_rows(24, seed=1)))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest(tiny, data)))
    workdir, said = tmp_path / "work", tmp_path / "said.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with said.open("wb") as out:
        cli = subprocess.Popen(
            [str(Path(sys.executable).with_name("finetune")), "run", str(job), "--workdir", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        progress: ProgressReport | None = None
        while progress is None or progress.step < 1:  # training has begun: a step is done
            assert cli.poll() is None, said.read_text()
            assert time.monotonic() < deadline, said.read_text()
            time.sleep(0.2)
            for found in workdir.glob("default/stopped/*/progress.json"):
                progress = ProgressReport.model_validate_json(found.read_bytes())
        trainer = trainer_of(cli)
        assert trainer is not None
        group = os.getpgid(trainer)
        assert group == trainer != os.getpgid(cli.pid)  # its own group: a terminal's Ctrl-C is not sent twice
        os.kill(cli.pid, signum)
        code = cli.wait(timeout=40)
    finally:
        if cli.poll() is None:
            cli.kill()
    output = said.read_text()
    assert code == 128 + signum, output
    assert f"stopped by {signal.Signals(signum).name}" in output
    deadline = time.monotonic() + 5  # SIGKILLed leftovers are reaped by init, not at once
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(group) == []

    (log_file,) = workdir.glob("default/stopped/*/trainer.log")
    run, log = log_file.parent, log_file.read_text()
    assert "training stopped at step" in log, log
    (marker_file,) = (run / "checkpoints").glob(f"*/{COMPLETE_MARKER}")
    marker = CheckpointMarker.model_validate_json(marker_file.read_bytes())
    assert 1 <= marker.step < progress.total_steps  # saved mid-run, at the step it stopped
    assert f"step {marker.step} is saved" in output
    checkpoint = marker_file.parent
    assert not list(checkpoint.rglob(".*"))  # no temporary file of an unfinished write
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as weights:
        assert list(weights.keys())  # whole: the header and every tensor's offsets read back
    for state in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (checkpoint / state).stat().st_size > 0  # what resuming needs
