"""Progress reporting: `progress.json` in the run's staging prefix (what the operator reads into
`kubectl get ftj`) and a Prometheus endpoint in the pod with the same figures, plus MFU and accelerator
memory (docs/metrics.md is the contract; `flops.py` the MFU formula).

The file is replaced whole at most every `PROGRESS_INTERVAL_SECONDS` and at the end; only the main
process (rank 0) reports and serves. The endpoint listens on `$FINETUNE_METRICS_PORT` (the operator sets
9400 on training pods; off when unset). Every series carries the run's `namespace`, `finetunejob`, `run_id`
and `method`: never `job` or `instance`, which Prometheus would rename.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from transformers import TrainerCallback

from finetune_api.run_layout import PROGRESS_INTERVAL_SECONDS, ProgressReport
from finetune_api.trainer_config import ENV_METRICS_PORT
from finetune_trainer import flops
from finetune_trainer.early_stopping import StopWhenFlat
from finetune_trainer.storage import Store

LABELS = ("namespace", "finetunejob", "run_id", "method")


class Metrics:
    """The trainer's gauges, each bound to the run's labels. MFU and memory stay absent (no sample)
    until there is an accelerator to report them for."""

    def __init__(
        self, labels: dict[str, str] | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        values = {name: (labels or {}).get(name, "") for name in LABELS}
        self._families: dict[str, Gauge] = {}
        self._values = values

        def gauge(name: str, doc: str) -> Any:
            family = Gauge(f"finetune_trainer_{name}", doc, list(LABELS), registry=self.registry)
            self._families[name] = family
            return family.labels(**values)

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps the run will take.")
        self.loss = gauge("loss", "Training loss, last logged.")
        self.eval_loss = gauge("eval_loss", "Evaluation loss, last evaluated.")
        self.tokens_per_second = gauge("tokens_per_second", "Training tokens per second, recent, all ranks.")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds to the end of the run.")
        self.last_step = gauge(
            "last_step_timestamp_seconds", "When the last optimizer step ended, or training began (Unix s)."
        )
        self._optional: dict[str, str] = {
            "mfu": "Model FLOPs utilisation, 0-1 (docs/metrics.md).",
            "accelerator_memory_allocated_bytes": "Memory held by tensors on the accelerator.",
            "accelerator_memory_peak_bytes": "Peak accelerator memory held by tensors since training began.",
            "accelerator_memory_total_bytes": "The accelerator's memory.",
        }

    def set_optional(self, name: str, value: float) -> None:
        """Set a gauge that exists only where it means something (MFU, accelerator memory)."""
        if name not in self._families:
            doc = self._optional[name]
            name_ = f"finetune_trainer_{name}"
            self._families[name] = Gauge(name_, doc, list(LABELS), registry=self.registry)
        self._families[name].labels(**self._values).set(value)

    def serve(self) -> None:
        port = os.environ.get(ENV_METRICS_PORT)
        if port:
            start_http_server(int(port), registry=self.registry)


class ProgressReporter(TrainerCallback):
    def __init__(
        self,
        store: Store,
        uri: str,
        metrics: Metrics | None = None,
        seq_len: int = 0,
        early_stop: StopWhenFlat | None = None,
    ) -> None:
        self.early_stop = early_stop  # its reason goes into the report
        self.store = store
        self.uri = uri  # the run layout's progress.json
        self.metrics = metrics or Metrics()
        self.seq_len = seq_len  # for the attention term of the FLOPs per token
        self.flops_per_token = 0.0
        self.peak = 0.0  # FLOP/s of all devices together; 0: no MFU
        self.device: int | None = None  # this process's CUDA device, found at train begin; None on CPU
        self.report: dict[str, Any] = {}
        self.last_write = 0.0
        self.window: tuple[float, int] | None = None  # (time, tokens seen) at the last rate sample
        self.started = 0.0
        self.first_step = 0
        self.expected_seconds: float | None = None  # the whole run's, estimated before it starts

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step  # a resumed run starts past zero
        self.window = (self.started, state.num_input_tokens_seen or 0)
        self.metrics.last_step.set(time.time())  # a run that hangs before its first step stalls from here
        self.metrics.step.set(state.global_step)
        self.metrics.total_steps.set(max(1, state.max_steps or 1))
        if self.expected_seconds is not None:  # what is left of it, for a resumed run
            left = max(0, (state.max_steps or 0) - state.global_step) / max(1, state.max_steps or 1)
            self.report["expected_seconds"] = round(self.expected_seconds * left, 1)
            self.metrics.eta_seconds.set(self.report["expected_seconds"])
            self._maybe_write(state, force=True)
            del self.report["expected_seconds"]  # the first report's alone: later ones have a measured rate
        self.device = device = _accelerator()
        if device is None:
            return
        import torch  # noqa: PLC0415

        memory = torch.cuda.get_device_properties(device).total_memory
        self.metrics.set_optional("accelerator_memory_total_bytes", memory)
        mixed = bool(getattr(args, "bf16", False) or getattr(args, "fp16", False))
        if mixed and model is not None:
            peak = flops.peak_flops(torch.cuda.get_device_name(device))
            if peak is not None:
                total, trainable = flops.parameter_counts(model)
                self.flops_per_token = flops.flops_per_token(model.config, total, trainable, self.seq_len)
                self.peak = peak * max(1, int(getattr(args, "world_size", 1)))

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
        self.metrics.last_step.set(time.time())
        self._memory()
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
            if self.peak:
                self.metrics.set_optional("mfu", self.flops_per_token * rate / self.peak)
            self.window = (now, seen)

    def _memory(self) -> None:
        if self.device is None:
            return
        import torch  # noqa: PLC0415

        device = self.device
        self.metrics.set_optional("accelerator_memory_allocated_bytes", torch.cuda.memory_allocated(device))
        self.metrics.set_optional("accelerator_memory_peak_bytes", torch.cuda.max_memory_allocated(device))

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
            stopped_early=self.early_stop.reason if self.early_stop is not None else None,
            updated_at=datetime.now(UTC),
            **self.report,
        )
        self.store.write_bytes(self.uri, report.model_dump_json(by_alias=True).encode())
        self.last_write = time.monotonic()


def _accelerator() -> int | None:
    """This process's CUDA device, or None on CPU."""
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.current_device())
