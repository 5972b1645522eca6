"""The launcher itself: ready quickly from the cache, and nothing left running after it stops."""

from __future__ import annotations

import os

import pytest

from controlplane.cluster import running
from helpers.processes import ProcessError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stops_every_process_even_when_the_block_fails(tmp_path) -> None:
    pids: list[int] = []

    def failing_test_body() -> None:
        with running(workdir=tmp_path) as plane:
            pids.extend(p.popen.pid for p in plane.processes)
            assert plane.kubeconfig.exists()
            assert all(alive(pid) for pid in pids)
            raise RuntimeError("test body failed")

    with pytest.raises(RuntimeError, match="test body failed"):
        failing_test_body()
    assert len(pids) == 2
    assert not any(alive(pid) for pid in pids)


def test_a_crashed_component_is_reported_with_its_log(tmp_path) -> None:
    with running(workdir=tmp_path) as plane:
        apiserver = plane.processes[1]
        apiserver.popen.kill()
        apiserver.popen.wait()
        with pytest.raises(ProcessError, match="kube-apiserver exited with -9") as failure:
            plane.check_alive()
        last_line = apiserver.log.read_text().strip().splitlines()[-1]
        assert last_line in str(failure.value)
