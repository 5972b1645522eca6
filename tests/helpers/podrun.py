"""Run a Job manifest's container on this machine the way a kubelet would, without a container runtime.

What the pod spec says is honoured: the container's command with Kubernetes' `$(VAR)` expansion, its env
(`value`, `secretKeyRef` from the Secrets given), and its volumes (ConfigMaps, downward-API annotations,
emptyDirs), each mount mapped to a folder under `root`, with every path in the command and env that falls
under a mount rewritten to that folder. `python` is this interpreter, whose environment has the trainer
installed, as the image has. Anything the runner cannot honour (another volume type, a fieldRef env) fails
loudly instead of being skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.builtin import cache_root

# what the image's environment brings besides the pod's env (trainer_image/Dockerfile: the bundled models and
# classifiers ready in FINETUNE_CACHE, here the one `make env` filled) and what tests set
BASE_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "FINETUNE_CACHE": str(cache_root()),
}
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
ANNOTATION = re.compile(r"^metadata\.annotations\['([^']+)'\]$")


@dataclass
class Exited:
    returncode: int
    output: str


def _volume(
    volume: dict[str, Any], where: Path, template: dict[str, Any], configmaps: dict[str, Any]
) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if "configMap" in volume:
        for key, value in configmaps[volume["configMap"]["name"]].items():
            (where / key).write_text(value)
    elif "downwardAPI" in volume:
        for item in volume["downwardAPI"]["items"]:
            match = ANNOTATION.match(item["fieldRef"]["fieldPath"])
            assert match, f"unsupported downward API field {item['fieldRef']['fieldPath']}"
            (where / item["path"]).write_text(template["metadata"]["annotations"][match.group(1)])
    elif "emptyDir" not in volume:
        raise AssertionError(f"unsupported volume {volume}")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values; an unknown one stays as written."""
    return VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def run_job(
    manifest: dict[str, Any],
    root: Path,
    *,
    configmaps: dict[str, dict[str, str]] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    timeout: float = 300,
) -> Exited:
    template = manifest["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    mounts: dict[str, Path] = {}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        local = root / mount["name"]
        _volume(volumes[mount["name"]], local, template, configmaps or {})
        mounts[mount["mountPath"]] = local

    def local(value: str) -> str:
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(mounts[path]) + value[len(path) :]
        return value

    env = {"PATH": os.environ["PATH"], **BASE_ENV}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = local(expand(var["value"], env))
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = (secrets or {})[ref["name"]][ref["key"]]
    command = [local(expand(arg, env)) for arg in container["command"] + container.get("args", [])]
    assert command[0] == "python", f"the runner starts python entry points, not {command[0]}"
    done = subprocess.run(
        [sys.executable, *command[1:]],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Exited(done.returncode, done.stdout + done.stderr)
