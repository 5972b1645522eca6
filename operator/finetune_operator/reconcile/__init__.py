"""Pure reconcile: (observed FineTuneJob, its children, its run's storage, now) -> what to do.

No I/O and no clock: the handlers observe, call `reconcile`, and carry out the `Decision`. The lifecycle
and its phases: `lifecycle`; one module per phase (`validate`, `train`, `gate`, `promote`) around `core`.
"""

from finetune_operator.observed import (
    Decision,
    Event,
    JobObservation,
    JobOutcome,
    Observed,
    PodObservation,
    StorageObservation,
)
from finetune_operator.reconcile.lifecycle import Reads, invalid_spec, reconcile, storage_reads

__all__ = [
    "Decision",
    "Event",
    "JobObservation",
    "JobOutcome",
    "Observed",
    "PodObservation",
    "Reads",
    "StorageObservation",
    "invalid_spec",
    "reconcile",
    "storage_reads",
]
