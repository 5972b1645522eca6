"""Raw objects -> what the rollout reconcile reads: the operator's model server Deployments and HTTPRoute
into observations, a FineTuneJob into the version it promoted for a ModelDeployment, a ModelDeployment's
essence back into the model.

Pure functions over plain mappings (the bodies Kopf hands over, or the API's JSON): no kopf, no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from finetune_api.serving import VARIANTS
from finetune_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from finetune_api.v1alpha1.common import ObjectMeta
from finetune_api.v1alpha1.finetunejob_status import RolloutLink
from finetune_operator.builders.names import MODEL_DIGEST_ANNOTATION, VARIANT_LABEL
from finetune_operator.observed_deployment import PromotedVersion, RouteObservation, ServerObservation

ROUTE_CONDITIONS = ("Accepted", "ResolvedRefs")


def server_observation(body: Mapping[str, Any]) -> ServerObservation | None:
    """A model server Deployment: its variant (label), the digest its pod template serves (annotation),
    and how far its rollout is. None when its variant label is not one the operator writes."""
    metadata = body.get("metadata") or {}
    variant = (metadata.get("labels") or {}).get(VARIANT_LABEL)
    if variant not in VARIANTS:
        return None
    template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    status = body.get("status") or {}
    return ServerObservation(
        variant=variant,
        digest=(template.get("annotations") or {}).get(MODEL_DIGEST_ANNOTATION),
        generation=int(metadata.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
    )


def route_observation(body: Mapping[str, Any]) -> RouteObservation:
    """An HTTPRoute: accepted when every parent that reported says Accepted and ResolvedRefs True (None
    while none has reported); the message of the first condition that is not True."""
    metadata = body.get("metadata") or {}
    parents = (body.get("status") or {}).get("parents") or []
    accepted: bool | None = None
    message = ""
    generations: list[int] = []
    for parent in parents:
        conditions = {c.get("type"): c for c in parent.get("conditions") or []}
        for type_ in ROUTE_CONDITIONS:
            condition = conditions.get(type_)
            if condition is None:
                continue
            generations.append(int(condition.get("observedGeneration") or 0))
            ok = condition.get("status") == "True"
            accepted = ok if accepted is None else accepted and ok
            if not ok and not message:
                gateway = (parent.get("parentRef") or {}).get("name", "")
                reason, text = condition.get("reason", ""), condition.get("message", "")
                message = f"Gateway {gateway}: {type_} {reason}: {text}"
    return RouteObservation(
        accepted=accepted,
        message=message.strip(),
        generation=int(metadata.get("generation") or 0),
        observed_generation=min(generations, default=0),
    )


def promoted_version(body: Mapping[str, Any]) -> PromotedVersion | None:
    """A FineTuneJob that succeeded with a promoted version (status.promoted), with the rollout link its
    status carries now; None for any other job."""
    status = body.get("status") or {}
    promoted = status.get("promoted") or {}
    if status.get("phase") != "Succeeded" or not promoted.get("uri") or not promoted.get("digest"):
        return None
    at = promoted.get("promotedAt")
    link = None
    if status.get("rollout"):
        try:
            link = RolloutLink.model_validate(status["rollout"])
        except ValidationError:
            link = None  # rewritten by the next link the deployment decides
    return PromotedVersion(
        job=str((body.get("metadata") or {}).get("name") or ""),
        uri=str(promoted["uri"]),
        digest=str(promoted["digest"]),
        promoted_at=dt.datetime.fromisoformat(at.replace("Z", "+00:00")) if isinstance(at, str) else None,
        link=link,
    )


def load(essence_bytes: bytes) -> tuple[ModelDeployment, str | None]:
    """The deployment, and why its spec is refused if it is (then only metadata and status are loaded)."""
    raw = json.loads(essence_bytes)
    try:
        return ModelDeployment.model_validate(raw), None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        try:
            status = ModelDeploymentStatus.model_validate(raw.get("status") or {})
        except ValidationError:
            status = ModelDeploymentStatus()
        fields: dict[str, Any] = {"metadata": ObjectMeta.model_validate(raw["metadata"]), "status": status}
        return ModelDeployment.model_construct(**fields), problems


def status_of(essence_bytes: bytes) -> dict[str, Any] | None:
    """The status in an essence as `dump()` writes it, or None if it is not a valid status."""
    try:
        return ModelDeploymentStatus.model_validate(json.loads(essence_bytes).get("status") or {}).dump()
    except ValidationError:
        return None


def annotations_of(essence_bytes: bytes) -> dict[str, str]:
    return dict((json.loads(essence_bytes).get("metadata") or {}).get("annotations") or {})
