"""Kopf handlers (the only importer of kopf). Importing this package registers them.

registrations   the Kopf decorators: start-up, indexes, events, deletion
runtime         one reconcile loop per FineTuneJob, which never dies quietly
observe         a job's children, EvalGate, Secret and staging, as reconcile reads them
parse           raw Jobs, Pods, Secrets and FineTuneJobs into observations (pure)
"""

from finetune_operator.handlers import registrations

__all__ = ["registrations"]
