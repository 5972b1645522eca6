"""The ValidatingAdmissionPolicies that bind an approval to the user who gave it, generated beside the CRDs.

An approval is a pair of annotations on a FineTuneJob (`finetune.dev/approve: <verdict id>` and
`finetune.dev/approved-by: <user>`; `reject`/`rejected-by` alike; `approval-comment`). Anyone who may
update the job could type any name into them, so the API server checks every request that adds, changes or
removes one of them (`matchConditions`), whoever sends it (system:masters included):

- `approvals.finetune.dev`: the job names an EvalGate (`spec.evalGateRef`), and when `approve` or
  `approved-by` changes, `approved-by` is the requester's own user name (likewise `reject`/`rejected-by`;
  removing both is allowed);
- `approvers.finetune.dev`: the requester is one of the gate's `approvers` (their user name is in
  `approvers.users`, or one of their groups in `approvers.groups`). The EvalGate is this policy's
  parameter: the binding selects every EvalGate in the job's namespace and each checks only the jobs that
  reference it (a policy cannot follow a reference). The API server looks parameters up before it
  evaluates matchConditions, so a namespace without EvalGates must be allowed (`parameterNotFoundAction:
  Allow`) or no FineTuneJob could be created there; a job whose gate is missing has no verdict to approve,
  and the operator refuses approvals while its gate is missing.

The operator honours approvals only while both policies and their bindings are installed (`POLICIES`), so
an approval always carries a name the API server authenticated.

A third policy does the same for a ModelDeployment's manual rollout actions (`finetune.dev/rollout-action`
and `finetune.dev/rollout-action-by`): `rollouts.finetune.dev` requires, of every request that changes
either, that `rollout-action-by` is the requester's own user name (removing both is allowed: the operator
does so once it has acted) and that the action is one of ROLLOUT_ACTIONS. The operator honours actions
only while it and its binding are installed (`ROLLOUT_POLICIES`).

Pure: builds the objects; `python -m finetune_api.crd` writes them to crds/admission/approval-policy.yaml
and crds/admission/rollout-policy.yaml.
Apply it after the CRDs are Established: a policy whose paramKind the API server cannot resolve yet denies
every FineTuneJob request until it is re-applied (`kubectl apply -f crds/` does not recurse into it).
"""

from __future__ import annotations

from typing import Any

from finetune_api.base import API_VERSION, GROUP
from finetune_api.v1alpha1.finetunejob_status import (
    APPROVAL_ANNOTATIONS,
    APPROVE_ANNOTATION,
    APPROVED_BY_ANNOTATION,
    REJECT_ANNOTATION,
    REJECTED_BY_ANNOTATION,
)
from finetune_api.v1alpha1.modeldeployment import (
    ROLLOUT_ACTION_ANNOTATION,
    ROLLOUT_ACTION_BY_ANNOTATION,
    ROLLOUT_ACTIONS,
    ROLLOUT_ANNOTATIONS,
)

POLICY_NAME = f"approvals.{GROUP}"  # the requester's own name in approved-by / rejected-by
APPROVERS_POLICY_NAME = f"approvers.{GROUP}"  # the requester is one of the gate's approvers
POLICIES = (POLICY_NAME, APPROVERS_POLICY_NAME)
POLICY_FILE = "admission/approval-policy.yaml"  # under crds/: applied once the CRDs are Established
ROLLOUT_POLICY_NAME = f"rollouts.{GROUP}"  # the requester's own name in rollout-action-by
ROLLOUT_POLICIES = (ROLLOUT_POLICY_NAME,)
ROLLOUT_POLICY_FILE = "admission/rollout-policy.yaml"
ADMISSION_API = "admissionregistration.k8s.io/v1"


def _keys(keys: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{k}'" for k in keys) + "]"


def _annotation(which: str, key: str) -> str:
    """CEL: annotation `key` ('' when absent) of the object after (`new`) or before (`old`) the request."""
    return f"({key} in variables.{which} ? variables.{which}[{key}] : '')"


# Variables, evaluated per request (and per EvalGate parameter).
VARIABLES = {
    "new": "has(object.metadata.annotations) ? object.metadata.annotations : {}",
    "old": "oldObject != null && has(oldObject.metadata.annotations) ? oldObject.metadata.annotations : {}",
    "changed": (
        f"{_keys(APPROVAL_ANNOTATIONS)}.filter(k, {_annotation('new', 'k')} != {_annotation('old', 'k')})"
    ),
    "judgedHere": "has(object.spec.evalGateRef) && params.metadata.name == object.spec.evalGateRef.name",
    "approver": (
        "has(params.spec.approvers) && ("
        "(has(params.spec.approvers.users) && request.userInfo.username in params.spec.approvers.users) || "
        "(has(params.spec.approvers.groups) && has(request.userInfo.groups) && "
        "request.userInfo.groups.exists(g, g in params.spec.approvers.groups)))"
    ),
}
PARAM_VARIABLES = ("judgedHere", "approver")


def changes(keys: tuple[str, ...]) -> str:
    """CEL: whether the request adds, changes or removes one of `keys` (variables are not available in
    matchConditions)."""
    return (
        f"{_keys(keys)}.exists(k, "
        "(has(object.metadata.annotations) && k in object.metadata.annotations ? "
        "object.metadata.annotations[k] : '') != "
        "(oldObject != null && has(oldObject.metadata.annotations) && k in oldObject.metadata.annotations ? "
        "oldObject.metadata.annotations[k] : ''))"
    )


CHANGES = changes(APPROVAL_ANNOTATIONS)


def _own_name(decision: str, by: str) -> dict[str, str]:
    """After a request that touches `decision` or `by`, `by` is the requester's name (or both are gone)."""
    new_decision, new_by = _annotation("new", f"'{decision}'"), _annotation("new", f"'{by}'")
    return {
        "expression": (
            f"!({_keys((decision, by))}.exists(k, k in variables.changed)) || "
            f"{new_by} == request.userInfo.username || ({new_decision} == '' && {new_by} == '')"
        ),
        "messageExpression": (
            f"'{by} must be your own user name (' + request.userInfo.username + '), set with {decision}'"
        ),
        "reason": "Forbidden",
    }


def _policy(
    name: str,
    validations: list[dict[str, str]],
    *,
    params: bool,
    resource: str = "finetunejobs",
    keys: tuple[str, ...] = APPROVAL_ANNOTATIONS,
    condition: str = "changes-an-approval",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"failurePolicy": "Fail"}
    if params:
        spec["paramKind"] = {"apiVersion": API_VERSION, "kind": "EvalGate"}
    variables = {k: v for k, v in VARIABLES.items() if params or k not in PARAM_VARIABLES}
    variables["changed"] = f"{_keys(keys)}.filter(k, {_annotation('new', 'k')} != {_annotation('old', 'k')})"
    spec |= {
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [resource],
                }
            ]
        },
        "matchConditions": [{"name": condition, "expression": changes(keys)}],
        "variables": [{"name": key, "expression": text} for key, text in variables.items()],
        "validations": validations,
    }
    return {
        "apiVersion": ADMISSION_API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def _binding(name: str, *, params: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"policyName": name, "validationActions": ["Deny"]}
    if params:
        # Allow: params are looked up before matchConditions, so Deny would refuse every FineTuneJob in a
        # namespace without EvalGates. A job whose gate is missing has no verdict to approve, and the
        # operator refuses approvals while the gate is missing.
        spec["paramRef"] = {"selector": {}, "parameterNotFoundAction": "Allow"}
    return {
        "apiVersion": ADMISSION_API,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": spec,
    }


def manifests() -> list[dict[str, Any]]:
    """Both policies and their bindings, in the order they are applied (after the CRDs)."""
    own_names = [
        {
            "expression": "has(object.spec.evalGateRef)",
            "message": "approval annotations apply only to a FineTuneJob with an evalGateRef",
            "reason": "Forbidden",
        },
        _own_name(APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION),
        _own_name(REJECT_ANNOTATION, REJECTED_BY_ANNOTATION),
    ]
    approvers = [
        {
            "expression": "!variables.judgedHere || variables.approver",
            "messageExpression": (
                "'only the approvers of EvalGate ' + params.metadata.name + ' (spec.approvers) may "
                "set, change or remove approval annotations; ' + request.userInfo.username + "
                "' is not one of them'"
            ),
            "reason": "Forbidden",
        }
    ]
    return [
        _policy(POLICY_NAME, own_names, params=False),
        _binding(POLICY_NAME, params=False),
        _policy(APPROVERS_POLICY_NAME, approvers, params=True),
        _binding(APPROVERS_POLICY_NAME, params=True),
    ]


def rollout_manifests() -> list[dict[str, Any]]:
    """The rollout actions' policy and its binding: the requester's own name in rollout-action-by, and an
    action the operator knows."""
    action = _annotation("new", f"'{ROLLOUT_ACTION_ANNOTATION}'")
    validations = [
        _own_name(ROLLOUT_ACTION_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION),
        {
            "expression": f"{action} == '' || {action} in {_keys(ROLLOUT_ACTIONS)}",
            "messageExpression": (
                f"'{ROLLOUT_ACTION_ANNOTATION} must be one of {', '.join(ROLLOUT_ACTIONS)}, not ' + {action}"
            ),
            "reason": "Invalid",
        },
    ]
    return [
        _policy(
            ROLLOUT_POLICY_NAME,
            validations,
            params=False,
            resource="modeldeployments",
            keys=ROLLOUT_ANNOTATIONS,
            condition="changes-a-rollout-action",
        ),
        _binding(ROLLOUT_POLICY_NAME, params=False),
    ]


FILES = {POLICY_FILE: manifests, ROLLOUT_POLICY_FILE: rollout_manifests}
