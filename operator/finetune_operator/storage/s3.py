"""Reads what a run wrote under its staging prefix, and deletes staging prefixes on request.

Blocking boto3 calls with short timeouts and one attempt: a slow or absent S3 becomes an observation
(`StorageObservation.error`) that reconcile waits on, never a hung operator. Callers run these functions
in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from finetune_api.gate import EvalReport
from finetune_api.promotion import digest_of
from finetune_api.run_layout import (
    CheckpointMarker,
    DataValidationReport,
    ProgressReport,
    StagingLayout,
    step_of,
)
from finetune_operator.observed import StorageObservation

MAX_CACHED_MARKERS = 50_000


@dataclass(frozen=True)
class S3Target:
    """Where and as whom to talk to S3 (credentials from the job's Secret, or the pod's identity)."""

    endpoint: str | None
    region: str | None
    access_key: str | None
    secret_key: str | None
    force_path_style: bool
    timeout: float


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b/ -> ("bucket", "a/b/")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@functools.lru_cache(maxsize=256)
def _client(target: S3Target) -> Any:
    config = Config(
        connect_timeout=target.timeout,
        read_timeout=target.timeout,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path" if target.force_path_style else "auto"},
    )
    return boto3.client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region or "us-east-1",
        aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        config=config,
    )


_markers: dict[str, CheckpointMarker] = {}
_markers_lock = threading.Lock()


def _get_bytes(client: Any, bucket: str, key: str) -> bytes | None:
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return body


def _get_json(client: Any, bucket: str, key: str) -> Any | None:
    body = _get_bytes(client, bucket, key)
    return None if body is None else json.loads(body)


def _eval_report(client: Any, bucket: str, key: str) -> dict[str, Any]:
    body = _get_bytes(client, bucket, key)
    if body is None:
        return {}
    try:
        return {
            "eval_report": EvalReport.model_validate_json(body),
            "eval_report_digest": hashlib.sha256(body).hexdigest(),
        }
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the document"
        return {"eval_problem": f"s3://{bucket}/{key} is unreadable: {where}: {first['msg']}"}


def observe_run(
    target: S3Target,
    layout: StagingLayout,
    *,
    report: bool,
    progress: bool,
    checkpoints: bool,
    eval_report: bool = False,
    manifest_uri: str | None = None,
) -> StorageObservation:
    """Read the objects reconcile needs now. Unreadable content counts as absent, except the evaluation
    report, whose corruption fails the gate; unreachable S3 is an error in the observation."""
    client = _client(target)
    found: dict[str, Any] = {}
    try:
        if eval_report:
            found |= _eval_report(client, *split_uri(layout.eval_report))
        if manifest_uri is not None:
            manifest = _get_bytes(client, *split_uri(manifest_uri))
            if manifest is not None:
                found["promoted_digest"] = digest_of(manifest)
        if report:
            raw = _get_json(client, *split_uri(layout.data_report))
            found["data_report"] = None if raw is None else DataValidationReport.model_validate(raw)
        if progress:
            raw = _get_json(client, *split_uri(layout.progress))
            found["progress"] = None if raw is None else ProgressReport.model_validate(raw)
        if checkpoints:
            found["checkpoints"] = tuple(_checkpoints(client, *split_uri(layout.checkpoints)))
    except (BotoCoreError, ClientError) as err:
        return StorageObservation(error=f"{type(err).__name__}: {err}")
    except (ValidationError, ValueError) as err:
        return StorageObservation(error=f"unreadable object under {layout.root}: {err}")
    return StorageObservation(**found)


def _checkpoints(client: Any, bucket: str, prefix: str) -> list[CheckpointMarker]:
    """The COMPLETE markers under the `checkpoints/` prefix."""
    markers = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if step_of(key) is None:
                continue
            cache_key = f"{bucket}/{key}"
            with _markers_lock:
                marker = _markers.get(cache_key)
            if marker is None:
                raw = _get_json(client, bucket, key)
                if raw is None:
                    continue
                marker = CheckpointMarker.model_validate(raw)
                with _markers_lock:
                    if len(_markers) >= MAX_CACHED_MARKERS:
                        _markers.clear()
                    _markers[cache_key] = marker
            markers.append(marker)
    return markers


def delete_prefix(target: S3Target, uri: str) -> int:
    """Delete every object under `uri`; returns how many. Raises on S3 errors."""
    bucket, prefix = split_uri(uri)
    if not prefix:
        raise ValueError(f"refusing to delete a whole bucket: {uri}")
    client = _client(target)
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted
