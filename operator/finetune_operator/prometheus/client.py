"""The operator's reads from Prometheus: instant queries over its HTTP API (`/api/v1/query`).

A rollout decision rests on these numbers, so an answer is a number only when it is unambiguous:

- exactly one sample: its value;
- an empty vector, or a sample whose value is NaN: no data (`QueryResult(value=None)`), which the rollout
  treats as inconclusive, never as a pass;
- several series, a result that is not a vector or a scalar, a PromQL error, an HTTP error, no answer
  within the timeout: an error, with Prometheus' own message where it gave one.

`read` runs every query of a `PrometheusReads` at once and returns what the rollout's observation needs.
Failed queries are counted in `finetune_operator_prometheus_query_errors_total` by reason. No kopf, no
Kubernetes: only HTTP to the address a ModelDeployment names.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from finetune_operator.metrics import METRICS, Metrics
from finetune_operator.observed_deployment import PrometheusReads, QueryResult, Sums

QUERY_PATH = "/api/v1/query"
TIMEOUT_SECONDS = 10.0
MAX_MESSAGE = 512


def parse_response(status: int, text: str) -> tuple[QueryResult, str | None]:
    """A query's answer from the HTTP status and body Prometheus sent, and, when it is an error, the
    reason it is counted under (http, promql, result, series)."""
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return QueryResult(error=f"HTTP {status}: not a Prometheus answer: {text[:MAX_MESSAGE]}"), "http"
    if body.get("status") != "success" or status >= 400:
        message = f"{body.get('errorType') or f'HTTP {status}'}: {body.get('error') or text[:MAX_MESSAGE]}"
        return QueryResult(error=message[:MAX_MESSAGE]), "promql" if body.get("errorType") else "http"
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _sample(result)
    if kind != "vector" or not isinstance(result, list):
        return QueryResult(error=f"the query must return a vector or a scalar, not {kind}"), "result"
    if not result:
        return QueryResult(), None
    if len(result) > 1:
        labels = "; ".join(json.dumps(s.get("metric", {}), sort_keys=True) for s in result[:3])
        message = f"the query must return one series, it returned {len(result)}: {labels}"
        return QueryResult(error=message[:MAX_MESSAGE]), "series"
    return _sample(result[0].get("value") if isinstance(result[0], dict) else None)


def _sample(pair: Any) -> tuple[QueryResult, str | None]:
    """`[timestamp, "value"]` -> its value (NaN: no data)."""
    try:
        value = float(pair[1])
    except (TypeError, ValueError, IndexError):
        return QueryResult(error=f"not a sample: {str(pair)[:MAX_MESSAGE]}"), "result"
    if math.isnan(value):
        return QueryResult(), None
    return QueryResult(value=value), None


@dataclass
class PrometheusClient:
    """One aiohttp session for every Prometheus the ModelDeployments name (a query carries its address)."""

    session: aiohttp.ClientSession
    timeout_seconds: float = TIMEOUT_SECONDS
    metrics: Metrics = field(default=METRICS)

    @classmethod
    def connect(
        cls, timeout_seconds: float = TIMEOUT_SECONDS, metrics: Metrics = METRICS
    ) -> PrometheusClient:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32),
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            headers={"User-Agent": "finetune-operator"},
        )
        return cls(session, timeout_seconds, metrics)

    async def close(self) -> None:
        await self.session.close()

    async def query(self, address: str, promql: str) -> QueryResult:
        """An instant query at `address` (the API's base URL); never raises for what Prometheus or the
        network does: that is a QueryResult with an error."""
        url = address.rstrip("/") + QUERY_PATH
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self.session.post(url, data={"query": promql}) as response:
                    status, text = response.status, await response.text()
        except TimeoutError:
            self.metrics.prometheus_errors.labels("timeout").inc()
            return QueryResult(error=f"no answer from {address} within {self.timeout_seconds:g}s")
        except aiohttp.ClientError as err:
            self.metrics.prometheus_errors.labels("unreachable").inc()
            return QueryResult(error=f"cannot reach {address}: {type(err).__name__}: {err}"[:MAX_MESSAGE])
        result, reason = parse_response(status, text)
        if reason is not None:
            self.metrics.prometheus_errors.labels(reason).inc()
        return result

    async def read(
        self, address: str, reads: PrometheusReads
    ) -> tuple[dict[str, Sums] | None, dict[str, QueryResult] | None, str | None]:
        """Every query of `reads` at once: the shadow checks' sums (None when not asked for), the
        analyses' results (None when not asked for), and the first error of a shadow query (a sum that
        cannot be read leaves the shadow checks undecided: their Sums are left out of the answer)."""
        queries: list[str] = [q for triple in reads.shadow.values() for q in triple]
        queries += list(reads.analysis.values())
        answers = await asyncio.gather(*(self.query(address, q) for q in queries))
        it = iter(answers)
        shadow: dict[str, Sums] | None = None
        error: str | None = None
        if reads.shadow:
            shadow = {}
            for metric in reads.shadow:
                triple = (next(it), next(it), next(it))
                failed = next((r.error for r in triple if r.error is not None), None)
                if failed is not None:
                    error = error or f"shadow check {metric}: {failed}"
                    continue
                samples, total, squares = (r.value or 0.0 for r in triple)  # no data: nothing counted yet
                shadow[metric] = Sums(samples=samples, total=total, squares=squares)
        analysis: dict[str, QueryResult] | None = None
        if reads.analysis:
            analysis = {name: next(it) for name in reads.analysis}
        return shadow, analysis, error
