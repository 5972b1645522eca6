"""Operator settings, from the environment (the Helm chart sets them on the Deployment)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_TRAINER_IMAGE = "finetune-trainer:0.1.0"


@dataclass(frozen=True)
class Settings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    trainer_service_account: str = ""  # trainer pods' ServiceAccount when a job names none ("": the default)
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    reconcile_interval_seconds: float = 15.0  # progress reads while training
    resync_seconds: float = 300.0  # a job waiting on its children, which wake it when they change
    s3_timeout_seconds: float = 10.0
    cleanup_deadline_seconds: float = 300.0
    validation_cpu: str = "1"
    validation_memory: str = "4Gi"
    metrics_port: int = 0  # Prometheus metrics (0: not served); the chart sets monitoring.metricsPort

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        namespaces = tuple(n for n in env.get("FINETUNE_NAMESPACES", "").replace(",", " ").split() if n)
        return cls(
            trainer_image=env.get("FINETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            trainer_service_account=env.get("FINETUNE_TRAINER_SERVICE_ACCOUNT", ""),
            namespaces=namespaces,
            reconcile_interval_seconds=float(env.get("FINETUNE_RECONCILE_INTERVAL", "15")),
            resync_seconds=float(env.get("FINETUNE_RESYNC_INTERVAL", "300")),
            s3_timeout_seconds=float(env.get("FINETUNE_S3_TIMEOUT", "10")),
            cleanup_deadline_seconds=float(env.get("FINETUNE_CLEANUP_DEADLINE", "300")),
            metrics_port=int(env.get("FINETUNE_METRICS_PORT", "0")),
        )
