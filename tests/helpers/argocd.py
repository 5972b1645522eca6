"""Argo CD's view of our objects, for the tests: the health scripts (helm/finetune-operator/files/health/)
run in Lua 5.1 as Argo CD runs them (only `obj` and the base, string, table and math libraries), and a
re-apply of a job's manifest as Argo CD syncs it (server-side apply under its own field manager).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from lupa.lua51 import LuaRuntime

from helpers.support import ROOT

HEALTH = ROOT / "helm" / "finetune-operator" / "files" / "health"
SCRIPTS = {
    "FineTuneJob": HEALTH / "finetunejob.lua",
    "EvalGate": HEALTH / "evalgate.lua",
    "ModelDeployment": HEALTH / "modeldeployment.lua",
}
ARGOCD_FIELD_MANAGER = "argocd-controller"
# kubectl's client-side apply bookkeeping, which `kubectl apply --server-side` drops when it takes over the
# fields a client-side apply managed (the tests create the job with a client-side apply)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_SANDBOXED = """
return function(source, obj)
  local env = {obj = obj, ipairs = ipairs, pairs = pairs, next = next, select = select, type = type,
               tostring = tostring, tonumber = tonumber, error = error, pcall = pcall, unpack = unpack,
               string = string, table = table, math = math}
  local chunk = assert(loadstring(source, "=health.lua"))
  setfenv(chunk, env)
  return chunk()
end
"""


def health(obj: dict[str, Any], script: Path | None = None) -> tuple[str, str]:
    """(hs.status, hs.message) that Argo CD would show for `obj`, one of our kinds as read."""
    lua = LuaRuntime(register_eval=False, register_builtins=False)
    assert lua.eval("_VERSION") == "Lua 5.1"
    run = lua.execute(_SANDBOXED)
    source = (script or SCRIPTS[obj["kind"]]).read_text()
    hs = run(source, lua.table_from(obj, recursive=True))
    return str(hs["status"]), str(hs["message"])


def expected_health(obj: dict[str, Any]) -> tuple[str, list[str]]:
    """What a FineTuneJob's health must be at its phase (a ModelDeployment's at its stage): the status, and
    what its message must name."""
    if obj.get("kind") == "ModelDeployment":
        return expected_deployment_health(obj)
    status = obj.get("status", {})
    phase = status.get("phase")
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    failing = conditions.get("ReconcileError", {})
    if phase == "Succeeded":
        return "Healthy", [conditions["Succeeded"]["message"]]
    if phase in ("Failed", "Rejected"):
        said = conditions["Failed" if phase == "Failed" else "Succeeded"]
        return "Degraded", [phase, said["reason"], said["message"]]
    if failing.get("status") == "True":
        return "Degraded", [failing["message"]]
    if phase == "AwaitingApproval":
        return "Suspended", [f"verdict {status['gate']['verdictId']}", conditions["Approved"]["message"]]
    if phase == "Suspended":
        return "Suspended", [conditions["Suspended"]["message"]]
    return "Progressing", [str(phase)]


def expected_deployment_health(obj: dict[str, Any]) -> tuple[str, list[str]]:
    """What a ModelDeployment's health must be at its stage: the status, and what its message must name."""
    status = obj.get("status") or {}
    if not status.get("conditions"):
        return "Progressing", ["waiting for the operator"]
    conditions = {c["type"]: c for c in status["conditions"]}
    stage, summary = status["stage"], status.get("summary") or status["stage"]
    failing = conditions.get("ReconcileError", {})
    ready = conditions.get("Ready", {})
    if failing.get("status") == "True":
        return "Degraded", [failing["message"]]
    if ready.get("status") == "False" and ready.get("reason") == "InvalidSpec":
        return "Degraded", ["InvalidSpec", ready["message"]]
    if stage in ("Shadow", "Canary", "Promoting"):
        return (
            ("Suspended", ["paused by annotation", summary])
            if status.get("paused")
            else (
                "Progressing",
                [summary],
            )
        )
    if stage == "RolledBack":
        said = conditions["RolledBack"]
        return "Degraded", ["RolledBack", said["reason"], said["message"]]
    if ready.get("status") == "True":
        return "Healthy", [summary]
    never = ready.get("lastTransitionTime") == (status.get("stable") or {}).get("since")
    return ("Progressing" if never else "Degraded"), [summary, ready.get("message", "")]


def check_health(obj: dict[str, Any]) -> tuple[str, str]:
    """The health of a FineTuneJob (or ModelDeployment) as recorded, checked against `expected_health`."""
    got, message = health(obj)
    wanted, named = expected_health(obj)
    state = obj.get("status", {}).get("phase") or obj.get("status", {}).get("stage")
    assert got == wanted, (state, got, message)
    for part in named:
        assert part in message, (part, message)
    return got, message


def reapply_changes_nothing(cluster: Any, manifest: dict[str, Any], pause: float = 1.0) -> None:
    """Apply `manifest` again as Argo CD syncs it: the apply must not conflict, and neither the spec and
    metadata that others set nor the operator's status may change (also after the operator saw it)."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]

    def essence() -> dict[str, Any]:
        obj = cluster.ftj(namespace, name)
        meta = obj["metadata"]
        annotations = dict(meta.get("annotations") or {})
        annotations.pop(LAST_APPLIED, None)
        kept = ("generation", "labels", "finalizers")
        return {"spec": obj["spec"], "status": obj.get("status"), "annotations": annotations} | {
            k: meta.get(k) for k in kept
        }

    before = essence()
    applied = cluster.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={ARGOCD_FIELD_MANAGER}",
        "-f",
        "-",
        stdin=yaml.safe_dump(manifest),
        check=False,
    )
    assert applied.returncode == 0, applied.stderr  # a conflict fails the apply (no --force-conflicts)
    after = essence()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    time.sleep(pause)  # the apply is a watch event: give the operator time to (wrongly) act on it
    later = essence()
    assert later == before, {k: (before[k], later[k]) for k in before if before[k] != later[k]}
