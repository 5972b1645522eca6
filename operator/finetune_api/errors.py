"""Domain errors: what went wrong, as a condition reason and a message a user can act on.

Pure code (the run plan, reconcile) raises these instead of bare `ValueError`s, and whoever runs it decides
by the class what happens next: a `PermanentError` ends the run with a Failed condition carrying its reason
(the user must change something); a `TemporaryError` is retried after `delay` seconds. In the operator,
reconcile turns a PermanentError into the Failed condition, the job's loop waits out a TemporaryError, and
the deletion handler raises Kopf's TemporaryError for one (a PermanentError there lets the object go with
a Warning Event naming the reason); `finetune run` prints the reason and message and exits 1.
"""

from __future__ import annotations

from finetune_api.v1alpha1.conditions import Reason


class DomainError(Exception):
    """An error with a PascalCase reason (for conditions and Events) and a human message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PermanentError(DomainError):
    """Retrying cannot help: the run fails, and the reason says what kind of change is needed."""


class TemporaryError(DomainError):
    """Something is not there yet or not reachable: look again after `delay` seconds."""

    def __init__(self, reason: Reason, message: str, *, delay: float = 15.0) -> None:
        super().__init__(reason, message)
        self.delay = delay
