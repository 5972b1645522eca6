"""The condition and Event vocabulary is defined once: every reason the operator uses is a `Reason`, and
every `Reason` is used (a reason in the enum that nothing sets is documentation that lies)."""

from __future__ import annotations

import re

from finetune_api.v1alpha1 import Reason
from finetune_api.v1alpha1.modeldeployment_status import DeploymentReason
from helpers.support import ROOT

# Where conditions and Events are written (the API's own CEL rules use the API server's reasons instead).
SOURCES = sorted(
    path
    for package in ("finetune_api", "finetune_operator", "finetune_cli")
    for path in (ROOT / "operator" / package).rglob("*.py")
    if path.parent.name != "v1alpha1"
)


def test_every_reason_is_used_and_no_reason_is_spelled_out() -> None:
    used: set[str] = set()
    spelled: list[str] = []
    for path in SOURCES:
        text = path.read_text()
        used |= set(re.findall(r"\bReason\.([A-Z_]+)\b", text))
        spelled += [f"{path.name}: {m}" for m in re.findall(r"\breason=\"[A-Za-z]+\"", text)]
    assert spelled == []
    assert used - set(Reason.__members__) == set()
    assert set(Reason.__members__) - used == set()


def test_every_deployment_reason_is_used() -> None:
    """The same for ModelDeployments: every `DeploymentReason` is set somewhere, none is undefined."""
    used: set[str] = set()
    for path in SOURCES:
        used |= set(re.findall(r"\bDeploymentReason\.([A-Z_]+)\b", path.read_text()))
    assert used - set(DeploymentReason.__members__) == set()
    assert set(DeploymentReason.__members__) - used == set()
