"""The rollout actions' admission policy (finetune_api.admission.rollout_manifests), as text: what it
matches, what it checks, how it is bound. tests/integration/test_rollout_actions.py has the real API server
enforce it (the CEL interpreter available here does not compare a map with null as the API server does)."""

from __future__ import annotations

from finetune_api.admission import ROLLOUT_POLICY_NAME, rollout_manifests
from finetune_api.v1alpha1.modeldeployment import (
    ROLLOUT_ACTION_ANNOTATION,
    ROLLOUT_ACTION_BY_ANNOTATION,
    ROLLOUT_ACTIONS,
)

ACTION, BY = ROLLOUT_ACTION_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION


def test_it_matches_only_requests_that_change_a_rollout_annotation() -> None:
    spec = rollout_manifests()[0]["spec"]
    (condition,) = spec["matchConditions"]
    assert f"['{ACTION}', '{BY}'].exists(k," in condition["expression"]
    assert "oldObject != null" in condition["expression"]  # CREATE too


def test_it_checks_the_requesters_own_name_or_removal_of_both_and_a_known_action() -> None:
    own, known = rollout_manifests()[0]["spec"]["validations"]
    new_by = f"('{BY}' in variables.new ? variables.new['{BY}'] : '')"
    new_action = f"('{ACTION}' in variables.new ? variables.new['{ACTION}'] : '')"
    assert f"{new_by} == request.userInfo.username" in own["expression"]
    assert f"({new_action} == '' && {new_by} == '')" in own["expression"]
    assert own["reason"] == "Forbidden"
    assert str(list(ROLLOUT_ACTIONS)) in known["expression"]
    assert known["expression"].startswith(f"{new_action} == '' ||")
    assert known["reason"] == "Invalid"


def test_the_policy_matches_modeldeployments_and_is_bound_to_deny() -> None:
    vap, binding = rollout_manifests()
    assert vap["metadata"]["name"] == ROLLOUT_POLICY_NAME
    assert vap["spec"]["failurePolicy"] == "Fail"
    rules = vap["spec"]["matchConstraints"]["resourceRules"]
    assert [r["resources"] for r in rules] == [["modeldeployments"]]
    assert rules[0]["operations"] == ["CREATE", "UPDATE"]
    assert binding["spec"] == {"policyName": ROLLOUT_POLICY_NAME, "validationActions": ["Deny"]}
