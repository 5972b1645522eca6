"""The Argo CD health scripts as documented: docs/argocd.md holds them exactly as they are in the repository
(helm/finetune-operator/files/health/). What each phase's health is, the integration tests check against
the objects the operator itself writes (helpers/scenario.py records one at each phase)."""

from __future__ import annotations

import yaml

from helpers.argocd import SCRIPTS, health
from helpers.support import ROOT, example

DOC = ROOT / "docs" / "argocd.md"


def documented_argocd_cm() -> str:
    """The ```text block of docs/argocd.md that holds the argocd-cm keys."""
    blocks = DOC.read_text().split("```text\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if b.startswith("data:\n")]
    assert len(found) == 1, f"{DOC.name} should hold one argocd-cm block"
    return found[0]


def test_docs_hold_the_health_scripts_as_they_are() -> None:
    expected = "data:\n" + "".join(
        f"  resource.customizations.health.finetune.dev_{kind}: |\n"
        + "".join(f"    {line}" if line.strip() else line for line in path.read_text().splitlines(True))
        for kind, path in SCRIPTS.items()
    )
    assert documented_argocd_cm() == expected, f"paste this into {DOC.name}:\n{expected}"
    data = yaml.safe_load(documented_argocd_cm())["data"]
    assert data == {
        f"resource.customizations.health.finetune.dev_{kind}": path.read_text()
        for kind, path in SCRIPTS.items()
    }


def test_a_job_the_operator_has_not_seen_yet_is_progressing() -> None:
    job = example("sft-support-assistant.yaml")
    assert "status" not in job
    assert health(job) == ("Progressing", "waiting for the operator to pick the job up")


def test_a_phase_this_script_does_not_know_is_unknown() -> None:
    job = example("sft-support-assistant.yaml") | {"status": {"phase": "Archived"}}  # a later API's phase
    assert health(job) == ("Unknown", "unknown phase Archived")
