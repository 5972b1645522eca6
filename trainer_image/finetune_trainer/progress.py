"""Progress reporting: `progress.json` in the run's staging prefix (what the operator reads into
`kubectl get ftj`) and a Prometheus endpoint in the pod with the same figures.

The file is replaced whole at most every `PROGRESS_INTERVAL_SECONDS` and at the end; only the main
process (rank 0) reports. The endpoint listens on `$FINETUNE_METRICS_PORT` (9400 in the image; off
when unset).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from transformers import TrainerCallback

from finetune_api.run_layout import PROGRESS_INTERVAL_SECONDS, ProgressReport
from finetune_trainer.storage import Store

METRICS_PORT_ENV = "FINETUNE_METRICS_PORT"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"finetune_trainer_{name}", doc, registry=self.registry)

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps the run will take.")
        self.loss = gauge("loss", "Training loss, last logged.")
        self.eval_loss = gauge("eval_loss", "Evaluation loss, last evaluated.")
        self.tokens_per_second = gauge("tokens_per_second", "Training tokens per second, recent.")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds to the end of the run.")

    def serve(self) -> None:
        port = os.environ.get(METRICS_PORT_ENV)
        if port:
            start_http_server(int(port), registry=self.registry)


class ProgressReporter(TrainerCallback):
    def __init__(self, store: Store, uri: str, metrics: Metrics | None = None) -> None:
        self.store = store
        self.uri = uri  # the run layout's progress.json
        self.metrics = metrics or Metrics()
        self.report: dict[str, Any] = {}
        self.last_write = 0.0
        self.window: tuple[float, int] | None = None  # (time, tokens seen) at the last rate sample
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step  # a resumed run starts past zero
        self.window = (self.started, state.num_input_tokens_seen or 0)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.report["loss"] = float(logs["loss"])
            self.metrics.loss.set(logs["loss"])
        if "eval_loss" in logs:
            self.report["eval_loss"] = float(logs["eval_loss"])
            self.metrics.eval_loss.set(logs["eval_loss"])
        self._rate(state)
        self._maybe_write(state, force="eval_loss" in logs)

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._maybe_write(state, force=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._rate(state)
        self._maybe_write(state, force=True)

    def _rate(self, state: Any) -> None:
        now, seen = time.monotonic(), state.num_input_tokens_seen or 0
        if self.window is not None and now - self.window[0] >= 1.0 and seen > self.window[1]:
            rate = (seen - self.window[1]) / (now - self.window[0])
            self.report["tokens_per_second"] = round(rate, 1)
            self.metrics.tokens_per_second.set(rate)
            self.window = (now, seen)

    def _maybe_write(self, state: Any, *, force: bool) -> None:
        total = max(1, state.max_steps or 1)
        self.metrics.step.set(state.global_step)
        self.metrics.total_steps.set(total)
        done = state.global_step - self.first_step
        if done > 0:
            per_step = (time.monotonic() - self.started) / done
            self.metrics.eta_seconds.set(max(0.0, (total - state.global_step) * per_step))
        if not state.is_world_process_zero:
            return
        if not force and time.monotonic() - self.last_write < PROGRESS_INTERVAL_SECONDS:
            return
        report = ProgressReport(
            step=state.global_step,
            total_steps=total,
            epoch=round(state.epoch, 3) if state.epoch is not None else None,
            updated_at=datetime.now(UTC),
            **self.report,
        )
        self.store.write_bytes(self.uri, report.model_dump_json(by_alias=True).encode())
        self.last_write = time.monotonic()
