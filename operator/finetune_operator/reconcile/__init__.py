"""Pure reconcile: (observed FineTuneJob, its children, its run's storage, now) -> what to do.

No I/O and no clock: the handlers observe, call `reconcile`, and carry out the `Decision`.
"""

from finetune_operator.observed import (
    Decision,
    Event,
    JobObservation,
    Observed,
    PodObservation,
    StorageObservation,
)
from finetune_operator.reconcile.machine import Reads, invalid_spec, reconcile, storage_reads

__all__ = [
    "Decision",
    "Event",
    "JobObservation",
    "Observed",
    "PodObservation",
    "Reads",
    "StorageObservation",
    "invalid_spec",
    "reconcile",
    "storage_reads",
]
