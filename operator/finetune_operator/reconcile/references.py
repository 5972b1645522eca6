"""Before any pod: every Secret and ServiceAccount the job names must exist.

A pod whose ServiceAccount is missing is never created (the Job controller retries with backoff and says
so only in its own events), and one whose Secret is missing waits in CreateContainerConfigError. So the
lifecycle checks them first and tells the user on the job:

all found                       -> ReferencesResolved True
one missing, no Job unfinished  -> ReferencesResolved False (SecretNotFound, ServiceAccountNotFound),
                                   one warning Event, nothing created; looked up again every poll until
                                   it exists, then the job goes on by itself
one missing while a Job runs    -> the same condition, but that Job is left to run (its pods exist)

`named` says what to look up; the handlers look it up (metadata only) into `Observed.references`.
"""

from __future__ import annotations

from finetune_api.v1alpha1 import ConditionType, FineTuneJob, Reason
from finetune_operator.observed import Reference
from finetune_operator.reconcile import status as st
from finetune_operator.reconcile.core import Step
from finetune_operator.settings import Settings


def named(job: FineTuneJob, settings: Settings) -> tuple[Reference, ...]:
    """The objects the job's pods need that a name in the spec (or the operator's settings) points to."""
    refs: list[Reference] = []
    secret = job.spec.storage.credentials_secret_ref
    if secret is not None:
        refs.append(Reference("Secret", secret.name, "spec.storage.credentialsSecretRef.name"))
    if job.spec.service_account_name:
        refs.append(Reference("ServiceAccount", job.spec.service_account_name, "spec.serviceAccountName"))
    elif settings.trainer_service_account:
        refs.append(
            Reference(
                "ServiceAccount",
                settings.trainer_service_account,
                "the operator's default trainer ServiceAccount",
            )
        )
    return tuple(refs)


def resolved(step: Step) -> bool:
    """False while a named object is missing and no Job of the run is unfinished: the phases wait."""
    refs = step.observed.references
    if not refs:
        return True
    missing = [r for r in refs if not r.found]
    if not missing:
        found = ", ".join(f"{r.kind} {r.name}" for r in refs)
        step.condition(
            ConditionType.REFERENCES_RESOLVED, "True", Reason.REFERENCES_RESOLVED, f"found {found}"
        )
        return True
    namespace = step.job.metadata.namespace
    message = "; ".join(f"{r.kind} {r.name} ({r.field}) not found in namespace {namespace}" for r in missing)
    message += "; no pod starts until it exists, and the job goes on by itself once it does"
    reason = Reason.SECRET_NOT_FOUND if missing[0].kind == "Secret" else Reason.SERVICE_ACCOUNT_NOT_FOUND
    previous = st.condition(step.decision.status.conditions, ConditionType.REFERENCES_RESOLVED)
    if previous is None or (previous.reason, previous.message) != (reason, message):
        step.event(reason, message, warning=True)
    step.condition(ConditionType.REFERENCES_RESOLVED, "False", reason, message)
    observed = step.observed
    children = [observed.validation, *observed.training, observed.evaluation, observed.promotion]
    if any(j is not None and j.outcome is None for j in children):
        return True  # its pods exist already: leave it to run (a new one waits)
    step.poll()  # Secrets and ServiceAccounts are not watched: look again
    return False
