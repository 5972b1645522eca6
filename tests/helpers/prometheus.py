"""Debian's Prometheus and promtool (tests/prometheus/fetch.sh, cached outside the repository): a real
Prometheus that scrapes static targets every second, its query API, and promtool's checks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helpers.processes import Process, free_port, spawn, wait_http
from helpers.support import ROOT

FETCH_SCRIPT = ROOT / "tests" / "prometheus" / "fetch.sh"


@functools.cache
def tools() -> Path:
    """The directory holding `prometheus` and `promtool` (fetched once per machine)."""
    result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"fetching Prometheus failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools() / "promtool"), *args],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
        timeout=120,
    )


@dataclass
class Prometheus:
    url: str
    process: Process

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [time, "value"]}, ...]."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first non-empty result of `expr` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.process.check_alive()
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                assert result, f"no series for {expr} after {timeout:.0f}s"
                return result
            time.sleep(0.5)

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            active: list[dict[str, Any]] = json.load(response)["data"]["activeTargets"]
            return active


@contextlib.contextmanager
def prometheus(
    workdir: Path, targets: dict[str, list[str]], labels: dict[str, dict[str, str]] | None = None
) -> Iterator[Prometheus]:
    """A Prometheus scraping each scrape job's `host:port` targets every second (with optional extra
    target labels per scrape job), on a free port, until the block ends."""
    labels = labels or {}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": name,
                "static_configs": [{"targets": addresses, "labels": labels.get(name, {})}],
            }
            for name, addresses in targets.items()
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = spawn(
        "prometheus",
        [
            str(tools() / "prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", process)
        yield Prometheus(url, process)
    finally:
        process.stop()
