"""Kopf handlers (the only importer of kopf). Importing this package registers them.

registrations   the Kopf decorators: start-up, indexes, events, deletion
loops           one reconcile loop per object, which never dies quietly (shared by both kinds)
runtime         the FineTuneJob's step: observe, reconcile, act
observe         a job's children, EvalGate, Secret and staging, as reconcile reads them
parse           raw Jobs, Pods, Secrets and FineTuneJobs into observations (pure)
deployments     the ModelDeployment's step: observe, read Prometheus, decide, act
rollout_parse   raw model server Deployments, HTTPRoutes, promoted FineTuneJobs into observations (pure)
"""

from finetune_operator.handlers import registrations

__all__ = ["registrations"]
