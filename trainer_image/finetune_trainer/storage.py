"""Locations a trainer reads and writes: `s3://bucket/key` through boto3, local paths (`file://` or plain),
so `finetune run` and tests work without object storage, and `builtin://` files the image ships.

Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, set from the job's
Secret); the endpoint and addressing style from the contract. Objects are replaced whole: an S3 PUT is
atomic per object, and local writes go through a temporary file and a rename, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from finetune_api.trainer_config import StorageTarget
from finetune_trainer import builtin


class StorageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Store:
    """Reads and writes URIs; `endpoint` etc. apply to s3:// URIs only."""

    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = True

    @classmethod
    def for_target(cls, target: StorageTarget) -> Store:
        return cls(target.endpoint, target.region, target.force_path_style)

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                body: bytes = self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as err:
                raise StorageError(f"cannot read {uri}: {err.response['Error'].get('Code', err)}") from err
            return body
        try:
            return local_path(uri).read_bytes()
        except builtin.BuiltinError as err:
            raise StorageError(str(err)) from err
        except OSError as err:
            raise StorageError(f"cannot read {uri}: {err.strerror}") from err

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                self._s3().put_object(Bucket=bucket, Key=key, Body=data)
            except ClientError as err:
                raise StorageError(f"cannot write {uri}: {err.response['Error'].get('Code', err)}") from err
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, json.dumps(value, indent=2, default=str).encode())

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                self._s3().head_object(Bucket=bucket, Key=key)
            except ClientError:
                return False
            return True
        return local_path(uri).exists()

    def list(self, prefix: str) -> list[str]:
        """Every object URI under `prefix`, sorted."""
        if is_s3(prefix):
            bucket, key = split(prefix)
            keys: list[str] = []
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                keys += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            return sorted(keys)
        root = local_path(prefix)
        if not root.exists():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def upload_dir(self, directory: Path, prefix: str, *, last: str | None = None) -> None:
        """Copy every file under `directory` to `prefix`; the file named `last` goes after all others
        (a marker that says the rest is complete)."""
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)
        for path in files:
            self.write_bytes(join(prefix, path.relative_to(directory).as_posix()), path.read_bytes())

    def download_prefix(self, prefix: str, directory: Path) -> None:
        for uri in self.list(prefix):
            relative = uri[len(prefix) :] if is_s3(prefix) else str(Path(uri).relative_to(local_path(prefix)))
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(uri))

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split(uri)
            self._s3().delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    def _s3(self) -> Any:
        return _client(self.endpoint, self.region, self.force_path_style)


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None, force_path_style: bool) -> Any:
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if force_path_style else "auto"},
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def local_path(uri: str) -> Path:
    if builtin.is_builtin(uri):
        return builtin.resolve(uri)
    return Path(uri.removeprefix("file://")).expanduser()


def join(prefix: str, name: str) -> str:
    if is_s3(prefix):
        return prefix.rstrip("/") + "/" + name
    return str(local_path(prefix) / name)
