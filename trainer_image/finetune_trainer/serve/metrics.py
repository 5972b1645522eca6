"""The model server's Prometheus series (names in `finetune_api.serving`, contract in docs/serving.md), in a
registry of its own, every series labelled with SERVE_LABELS. The graded counters of every configured
check exist at 0 from the start: a series born at 1 is invisible to `increase()`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from finetune_api import serving
from finetune_api.serving import ServeContract

# fine enough below a second for quantile ratios between variants to mean something
LATENCY_BUCKETS = (
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
)


class ServerMetrics:
    def __init__(self, contract: ServeContract) -> None:
        self.registry = CollectorRegistry()
        names = list(serving.SERVE_LABELS)
        self.labels = {
            "namespace": contract.namespace,
            "modeldeployment": contract.deployment,
            "variant": contract.variant,
            "digest": contract.model.digest,
        }
        r = self.registry
        self.requests = Counter(
            serving.REQUESTS, "Requests answered, by HTTP status.", [*names, "code"], registry=r
        )
        self.duration = Histogram(
            serving.REQUEST_DURATION, "Whole-request latency.", names, buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter(serving.TOKENS, "Tokens read and written.", [*names, "kind"], registry=r)
        self.batch = Histogram(
            serving.BATCH_SIZE,
            "Requests generated together.",
            names,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        per_check = [*names, "metric"]
        self.graded = Counter(serving.GRADED_SAMPLES, "Request pairs graded.", per_check, registry=r)
        self.score = Counter(serving.GRADED_SCORE, "Sum of graded scores.", per_check, registry=r)
        self.squares = Counter(
            serving.GRADED_SCORE_SQUARES, "Sum of squared graded scores.", per_check, registry=r
        )
        self.grading_errors = Counter(
            serving.GRADING_ERRORS,
            "Pairs the judge could not grade (counted as the worst score).",
            per_check,
            registry=r,
        )
        self.unpaired = Counter(
            serving.UNPAIRED, "Replies whose stable reply never came (not graded).", names, registry=r
        )
        self.capture_dropped = Counter(
            serving.CAPTURE_DROPPED,
            "Replies not captured: the writer's queue was full or the write failed.",
            names,
            registry=r,
        )
        for metric in (c.metric for c in (contract.grading.checks if contract.grading else [])):
            for counter in (self.graded, self.score, self.squares, self.grading_errors):
                counter.labels(**self.labels, metric=metric)
        self.unpaired.labels(**self.labels)
        self.capture_dropped.labels(**self.labels)

    def answered(self, code: int, seconds: float) -> None:
        self.requests.labels(**self.labels, code=str(code)).inc()
        self.duration.labels(**self.labels).observe(seconds)

    def graded_pair(self, metric: str, score: float, *, error: bool) -> None:
        self.graded.labels(**self.labels, metric=metric).inc()
        self.score.labels(**self.labels, metric=metric).inc(score)
        self.squares.labels(**self.labels, metric=metric).inc(score * score)
        if error:
            self.grading_errors.labels(**self.labels, metric=metric).inc()
