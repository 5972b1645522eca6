"""Locations a trainer reads and writes: `s3://bucket/key` through boto3, local paths (`file://` or plain),
so `finetune run` and tests work without object storage, and `builtin://` files the image ships.

Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, set from the job's
Secret); the endpoint and addressing style from the contract. Objects are replaced whole: an S3 PUT is
atomic per object, and local writes go through a temporary file and a rename, so a reader never sees a
half-written file.

This is the only module of the trainer that talks to S3. Besides whole reads and writes, `Store` has the
primitives a promotion is built from, for S3 and local paths alike: `stream` (chunks, and the ETag that
pins them), `write_chunks` (an upload the server checks against its SHA-256; locally a synced temporary
file renamed into place) and `create` (`If-None-Match: *`; locally link(2)); and for S3 targets
`upload_file` and `copy_object` (server-side, only while the source keeps the ETag read), each in one
request or in parts. They raise boto3's or the OS's errors; `reraise` turns those into a StorageError
that says what failed where. Deciding what to copy and verifying it is `finetune_trainer.promotion`'s.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from finetune_api.trainer_config import StorageTarget
from finetune_trainer import builtin

CHUNK = 8 * 1024 * 1024
_MULTIPART = TransferConfig(multipart_threshold=1)  # a transfer asked to go in parts always does
_MISSING = {"404", "NoSuchKey", "NotFound"}
_TAKEN = {"PreconditionFailed", "ConditionalRequestConflict"}


class StorageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Stream:
    """The bytes of an object or file, read in CHUNK-sized pieces as they are consumed."""

    chunks: Iterator[bytes]
    etag: str | None = None  # S3's, which `copy_object` can require of its source; None for a local file


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
            with reraise(StorageError, "read", uri):  # also an unreachable endpoint, missing credentials
                body: bytes = self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
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
            with reraise(StorageError, "write", uri):
                self._s3().put_object(Bucket=bucket, Key=key, Body=data)
            return
        replace_file(local_path(uri), data)

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, json.dumps(value, indent=2, default=str).encode())

    def exists(self, uri: str, *, strict: bool = False) -> bool:
        """Whether the object or file exists. When the store cannot say (access denied, say), the answer
        is False, or with `strict` boto3's error is raised."""
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                self._s3().head_object(Bucket=bucket, Key=key)
            except ClientError as err:
                if strict and _code(err) not in _MISSING:
                    raise
                return False
            return True
        return local_path(uri).exists()

    def list(self, prefix: str) -> list[str]:
        """Every object URI under `prefix`, sorted; local files as paths, or as file:// URIs under a
        file:// prefix."""
        if is_s3(prefix):
            bucket, key = split(prefix)
            keys: list[str] = []
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                keys += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            return sorted(keys)
        root = local_path(prefix)
        if not root.exists():
            return []
        scheme = "file://" if prefix.startswith("file://") else ""
        return sorted(f"{scheme}{p}" for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def upload_dir(self, directory: Path, prefix: str, *, last: str | None = None) -> None:
        """Copy every file under `directory` to `prefix`; the file named `last` goes after all others
        (a marker that says the rest is complete)."""
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)
        for path in files:
            self.write_bytes(join(prefix, path.relative_to(directory).as_posix()), path.read_bytes())

    def download_prefix(self, prefix: str, directory: Path) -> None:
        """Every object under `prefix` into `directory`, each file whole (`replace_file`)."""
        for uri in self.list(prefix):
            if is_s3(prefix):
                relative = uri[len(prefix) :]
            else:  # a path, or a file:// URI under a file:// prefix
                relative = str(local_path(uri).relative_to(local_path(prefix)))
            replace_file(directory / relative, self.read_bytes(uri))

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split(uri)
            self._s3().delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    # --- the primitives of a promotion: they raise boto3's and the OS's errors (see `reraise`) ----------

    def stream(self, uri: str) -> Stream | None:
        """The bytes at `uri`, read as they are consumed; None when the object or file does not exist."""
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                response = self._s3().get_object(Bucket=bucket, Key=key)
            except ClientError as err:
                if _code(err) in _MISSING:
                    return None
                raise
            return Stream(response["Body"].iter_chunks(CHUNK), response["ETag"])
        path = local_path(uri)
        return Stream(_file_chunks(path)) if path.is_file() else None

    def write_chunks(self, uri: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Replace `uri` with `chunks` and return their SHA-256 (hex) and size. The S3 upload carries the
        SHA-256, and the server refuses bytes that do not match it (BadDigest); locally the bytes go to a
        synced temporary file that is renamed over `uri`."""
        if is_s3(uri):
            data = b"".join(chunks)
            sha256, size = sha256_of([data])
            bucket, key = split(uri)
            self._s3().put_object(Bucket=bucket, Key=key, Body=data, ChecksumSHA256=_b64(sha256))
            return sha256, size
        path = local_path(uri)
        tmp, sha256, size = _synced_temporary(path, chunks)
        os.replace(tmp, path)
        return sha256, size

    def create(self, uri: str, data: bytes) -> bool:
        """Write `data` to `uri` only if nothing is there; False, writing nothing, if something is. On S3
        a PutObject with `If-None-Match: *` (412 when taken) carrying the SHA-256; locally a hard link to a
        complete temporary file, which fails if the name exists (O_CREAT|O_EXCL without ever showing a
        half-written file)."""
        if is_s3(uri):
            bucket, key = split(uri)
            try:
                self._s3().put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=_b64(hashlib.sha256(data).hexdigest()),
                )
            except ClientError as err:
                if _code(err) in _TAKEN:
                    return False
                raise
            return True
        path = local_path(uri)
        tmp = _synced_temporary(path, [data])[0]
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def upload_file(self, path: Path, uri: str, *, sha256: str, multipart: bool = False) -> None:
        """Upload the file at `path` to the s3:// `uri` with `sha256`, the caller's hash of it, for the
        server to check. `multipart` sends it in parts (needed above 5 GiB), each with its own SHA-256:
        then no checksum covers the whole object, so read it back to be sure."""
        bucket, key = split(uri)
        if multipart:
            extra = {"ChecksumAlgorithm": "SHA256"}
            self._s3().upload_file(str(path), bucket, key, ExtraArgs=extra, Config=_MULTIPART)
            return
        with path.open("rb") as body:
            self._s3().put_object(Bucket=bucket, Key=key, Body=body, ChecksumSHA256=_b64(sha256))

    def copy_object(self, source: str, uri: str, *, if_match: str, multipart: bool = False) -> None:
        """Copy the s3:// `source` to the s3:// `uri` on the server (one endpoint), only while `source`
        still has ETag `if_match` (PreconditionFailed otherwise), so the copy holds the bytes the caller
        read. `multipart` copies in parts (needed above 5 GiB)."""
        bucket, key = split(uri)
        source_bucket, source_key = split(source)
        copy_source = {"Bucket": source_bucket, "Key": source_key}
        if multipart:
            extra = {"CopySourceIfMatch": if_match}
            self._s3().copy(copy_source, bucket, key, ExtraArgs=extra, Config=_MULTIPART)
        else:
            self._s3().copy_object(Bucket=bucket, Key=key, CopySource=copy_source, CopySourceIfMatch=if_match)

    def _s3(self) -> Any:
        """The client behind every S3 call: cached per endpoint (one connection pool, one retry policy)."""
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


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name in the same folder, renamed into place: a crash
    leaves the old file or none, never a half-written one (the temporary's dot name hides it from `list`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def sha256_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    """The SHA-256 (hex) and the size of `chunks`, consumed once."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def reraise(error: type[StorageError], action: str, uri: str) -> Iterator[None]:
    """Turns what boto3 or the OS raises in the block into `error` saying what failed where, e.g.
    "cannot copy s3://a/x to s3://b/x: SlowDown"; an `error` raised in the block passes unchanged."""
    try:
        yield
    except error:
        raise
    except ClientError as err:
        raise error(f"cannot {action} {uri}: {_code(err)}") from err
    except (BotoCoreError, StorageError) as err:
        raise error(f"cannot {action} {uri}: {err}") from err
    except OSError as err:
        raise error(f"cannot {action} {uri}: {err.strerror or err}") from err


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "error"))


def _b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def _synced_temporary(path: Path, chunks: Iterable[bytes]) -> tuple[Path, str, int]:
    """A temporary file beside `path` holding `chunks`, on disk (fsync), with their SHA-256 and size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), digest.hexdigest(), size
