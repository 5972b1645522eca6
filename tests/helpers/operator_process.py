"""The operator as users run it: `python -m finetune_operator`, a separate process the tests can stop
(to test restarts) and start again, with the image's packages only."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers.processes import Process, spawn

# `python -m finetune_operator` with only the packages of the operator image: the test environment also
# has the Kubernetes client (the tests use it), which the image leaves out and Kopf would import if found.
IMAGE_ENTRYPOINT = (
    "import runpy, sys; sys.modules['kubernetes'] = None; "
    "runpy.run_module('finetune_operator', run_name='__main__', alter_sys=True)"
)


@dataclass
class OperatorProcess:
    kubeconfig: Path
    workdir: Path
    namespaces: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None

    def start(self) -> OperatorProcess:
        args = [sys.executable, "-c", IMAGE_ENTRYPOINT]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "FINETUNE_RECONCILE_INTERVAL": "1",
            "FINETUNE_S3_TIMEOUT": "2",
            **self.env,
        }
        self.process = spawn("operator", args, self.workdir, env=env)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def log(self) -> str:
        path = self.workdir / "operator.log"
        return path.read_text(errors="replace") if path.exists() else ""
