"""Reading Prometheus: an answer is a number only when it is one unambiguous sample (parse_response, table
below); the client runs a rollout's reads at once against a local HTTP server, counts its failures, and
bounds its wait."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from finetune_operator.metrics import Metrics
from finetune_operator.observed_deployment import PrometheusReads, QueryResult, Sums
from finetune_operator.prometheus.client import PrometheusClient, parse_response


def vector(*values: str) -> str:
    result = [{"metric": {"variant": f"v{i}"}, "value": [1.0, v]} for i, v in enumerate(values)]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


ERRORS = "finetune_operator_prometheus_query_errors_total"
MATRIX = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
SCALAR = json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.25"]}})
PROMQL_ERROR = json.dumps(
    {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
)


@pytest.mark.parametrize(
    ("status", "text", "value", "error", "reason"),
    [
        (200, vector("0.5"), 0.5, None, None),
        (200, vector("0"), 0.0, None, None),
        (200, SCALAR, 0.25, None, None),
        (200, vector(), None, None, None),  # empty: no data
        (200, vector("NaN"), None, None, None),  # 0/0: no data
        (200, vector("+Inf"), float("inf"), None, None),  # a number (ratio over nothing to compare)
        (200, vector("1", "2"), None, "one series, it returned 2", "series"),
        (200, MATRIX, None, "a vector or a scalar, not matrix", "result"),
        (400, PROMQL_ERROR, None, 'bad_data: parse error: unexpected "}"', "promql"),
        (503, "Service Unavailable", None, "HTTP 503", "http"),
        (
            200,
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{}]}}),
            None,
            "not a sample",
            "result",
        ),
    ],
)
def test_an_answer_is_a_number_only_when_it_is_one_sample(
    status: int, text: str, value: float | None, error: str | None, reason: str | None
) -> None:
    result, counted = parse_response(status, text)
    assert result.value == value
    assert (result.error is None) == (error is None)
    if error is not None:
        assert error in (result.error or "")
    assert counted == reason


async def _serve(answers: dict[str, Any], delay: float = 0.0) -> tuple[web.AppRunner, str]:
    async def query(request: web.Request) -> web.Response:
        promql = (await request.post())["query"]
        await asyncio.sleep(delay)
        status, text = answers[str(promql)]
        return web.Response(status=status, text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


def test_a_rollouts_reads_run_together_and_failures_are_counted() -> None:
    answers = {
        "s": (200, vector("120")),
        "t": (200, vector("90")),
        "q": (200, vector("80")),
        "bad": (400, PROMQL_ERROR),
        "empty": (200, vector()),
        "err": (200, vector("0.001")),
        "lat": (200, vector("1", "2")),
    }
    reads = PrometheusReads(
        shadow={"win_rate": ("s", "t", "q"), "pii_leakage": ("bad", "empty", "empty")},
        analysis={"error-rate": "err", "latency": "lat"},
    )
    metrics = Metrics()

    async def run() -> tuple[Any, ...]:
        runner, address = await _serve(answers)
        client = PrometheusClient(aiohttp.ClientSession(), metrics=metrics)
        try:
            return await client.read(address, reads)
        finally:
            await client.close()
            await runner.cleanup()

    shadow, analysis, error = asyncio.run(run())
    assert shadow == {"win_rate": Sums(samples=120, total=90, squares=80)}  # pii_leakage: unreadable
    assert error is not None
    assert error.startswith("shadow check pii_leakage: bad_data")
    assert analysis["error-rate"] == QueryResult(value=0.001)
    assert "one series" in (analysis["latency"].error or "")
    registry = metrics.registry
    assert registry.get_sample_value(ERRORS, {"reason": "promql"}) == 1
    assert registry.get_sample_value(ERRORS, {"reason": "series"}) == 1
    assert registry.get_sample_value(ERRORS, {"reason": "http"}) == 0


def test_nothing_asked_nothing_read_and_a_slow_or_absent_prometheus_is_an_error() -> None:
    metrics = Metrics()

    async def run() -> tuple[Any, ...]:
        runner, address = await _serve({"slow": (200, vector("1"))}, delay=2.0)
        client = PrometheusClient(aiohttp.ClientSession(), timeout_seconds=0.2, metrics=metrics)
        try:
            nothing = await client.read(address, PrometheusReads())
            slow = await client.query(address, "slow")
            absent = await client.query("http://127.0.0.1:1", "up")
            return nothing, slow, absent
        finally:
            await client.close()
            await runner.cleanup()

    nothing, slow, absent = asyncio.run(run())
    assert nothing == (None, None, None)
    assert slow.value is None
    assert "within 0.2s" in (slow.error or "")
    assert "cannot reach http://127.0.0.1:1" in (absent.error or "")
    registry = metrics.registry
    assert registry.get_sample_value(ERRORS, {"reason": "timeout"}) == 1
    labels = {"reason": "unreachable"}
    assert registry.get_sample_value(ERRORS, labels) == 1
