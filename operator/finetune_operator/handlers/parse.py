"""Raw Kubernetes objects -> what reconcile reads: Jobs and Pods into observations, a Secret's keys into
credentials, a FineTuneJob into the compact essence its loop keeps and back into the model.

Pure functions over plain mappings (the bodies Kopf hands over, or the API's JSON): no kopf, no I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from finetune_api.v1alpha1 import EvalGate, FineTuneJob, FineTuneJobStatus
from finetune_api.v1alpha1.common import ObjectMeta
from finetune_operator.builders.names import ATTEMPT_LABEL
from finetune_operator.observed import JobObservation, JobOutcome, PodObservation

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def job_observation(body: Mapping[str, Any]) -> JobObservation:
    """A batch/v1 Job: its finishing condition (Complete or Failed) with reason and message, its attempt
    label, whether it is suspended, and when it started."""
    status = body.get("status") or {}
    metadata = body.get("metadata") or {}
    outcome, reason, message = None, "", ""
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in tuple(JobOutcome):
            outcome = JobOutcome(cond["type"])
            reason, message = cond.get("reason", ""), cond.get("message", "")
    attempt = (metadata.get("labels") or {}).get(ATTEMPT_LABEL)
    start = status.get("startTime")
    return JobObservation(
        name=metadata.get("name") or "",
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        active=int(status.get("active", 0)),
        suspended=bool((body.get("spec") or {}).get("suspend")),
        outcome=outcome,
        reason=reason,
        message=message,
        start_time=dt.datetime.fromisoformat(start) if start else None,
    )


def pod_observation(body: Mapping[str, Any]) -> PodObservation:
    """A Pod: its phase, why a container waits (image pull, config error), why it is unschedulable, and
    when the kubelet started it."""
    status = body.get("status") or {}
    metadata = body.get("metadata") or {}
    waiting_reason = waiting_message = unschedulable = ""
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            waiting_reason, waiting_message = waiting.get("reason", ""), waiting.get("message", "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            unschedulable = cond.get("message", "") or cond.get("reason", "")
    return PodObservation(
        name=metadata.get("name") or "",
        job_name=(metadata.get("labels") or {}).get("job-name", ""),
        phase=status.get("phase", "Pending"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        unschedulable_message=unschedulable,
        start_time=dt.datetime.fromisoformat(start) if (start := status.get("startTime")) else None,
    )


def secret_value(data: Mapping[str, str], key: str) -> str | None:
    """The decoded value of `key` in a Secret's `data`; None when the key is absent or not base64 text."""
    if key not in data:
        return None
    try:
        return base64.b64decode(data[key]).decode()
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 text
        return None


def evalgate(body: Mapping[str, Any] | None, name: str, namespace: str) -> tuple[EvalGate | None, str | None]:
    """The EvalGate in `body`, or why there is none usable (absent, or a spec the models refuse)."""
    if body is None:
        return None, f"EvalGate {name} not found in namespace {namespace}"
    try:
        return EvalGate.model_validate(body), None
    except ValidationError as err:
        first = err.errors()[0]
        return None, f"EvalGate {name} is invalid: {'.'.join(map(str, first['loc']))}: {first['msg']}"


def essence(body: Mapping[str, Any]) -> bytes:
    """What reconcile reads of a FineTuneJob or a ModelDeployment (not managedFields, not kubectl's copy
    of the whole manifest), as compact JSON: parked loops keep this between steps, and a 1.5 KB string
    weighs a tenth of the same dicts. Each step validates it afresh (about 0.1 ms)."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    kept = {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "resourceVersion": meta.get("resourceVersion"),
            "annotations": annotations,
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }
    return json.dumps(kept, separators=(",", ":")).encode()


def load(essence_bytes: bytes) -> tuple[FineTuneJob, str | None]:
    """The job, and why its spec is refused if it is (then only metadata and status are loaded)."""
    raw = json.loads(essence_bytes)
    try:
        return FineTuneJob.model_validate(raw), None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        status = FineTuneJobStatus.model_validate(raw["status"]) if raw["status"] else FineTuneJobStatus()
        meta = ObjectMeta.model_validate(raw["metadata"])
        # reconcile reads only metadata and status of a job whose spec is refused
        fields: dict[str, Any] = {"metadata": meta, "status": status}
        return FineTuneJob.model_construct(**fields), problems


def status_of(essence_bytes: bytes) -> dict[str, Any] | None:
    """The status in an essence as `dump()` writes it, or None if it is not a valid status."""
    try:
        return FineTuneJobStatus.model_validate(json.loads(essence_bytes)["status"]).dump()
    except ValidationError:
        return None
