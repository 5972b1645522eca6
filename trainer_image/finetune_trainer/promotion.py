"""Publishes a checkpoint as a promoted version: copy, verify, then the manifest, create-only.

`publish` runs a fixed sequence (layout and manifest: `finetune_api.promotion`):

1. refuse if the version already has a MANIFEST.json (PromotionConflict), before writing anything;
2. copy every checkpoint file and the caller's documents to `<destination>/<version>/`. S3 to S3 (one
   Store, one endpoint) is a server-side CopyObject made conditional on the ETag of the bytes just hashed,
   so what is copied is what was hashed; anything else streams. Uploads carry ChecksumSHA256, which the
   server checks on receipt;
3. delete what an earlier failed attempt left under the version and this one did not write;
4. read every written object back and compare its SHA-256 and size with the source's (VerificationError);
5. create MANIFEST.json: on S3 a PutObject with `If-None-Match: *`, locally a hard link to a complete
   temporary file, which fails if the name exists (O_CREAT|O_EXCL without ever showing a half-written file).

Readers trust a version only through its manifest, so a failure at any step (a PromotionError naming the
object) leaves nothing visible, and a retry redoes the copy over the leftovers.

Why verification reads the bytes back: SeaweedFS 4.48 (the suite's server) checks an uploaded
ChecksumSHA256 (a mismatch is refused with BadDigest), but for CopyObject it computes no SHA-256 even when
asked (the copy keeps the source's CRC32), so no checksum header vouches for a copy. It honours
`If-None-Match: *` on PutObject (412 PreconditionFailed), as S3 and MinIO do; the up-front check only makes
the common refusal early and cheap. tests/integration/test_promotion.py shows the BadDigest and the 412.

Limits: two promotions of the same version at once are not supported (the operator runs one per job). Both
pass step 1 and the later one's copies may overwrite objects the earlier one verified; its own manifest is
refused, and `verify` then names the changed object. Objects above 5 GiB (one request's limit) go as
multipart uploads and copies; their bytes are checked by step 4 alone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from finetune_api.promotion import (
    MANIFEST,
    Manifest,
    ManifestObject,
    check_relative_key,
    check_version,
    digest_of,
    version_of,
)
from finetune_trainer.storage import StorageError, Store, is_s3, local_path, split

CHUNK = 8 * 1024 * 1024
SINGLE_REQUEST_LIMIT = 5 * 1024**3  # the most one PutObject or CopyObject may carry
_MULTIPART = TransferConfig(multipart_threshold=1)  # used only above SINGLE_REQUEST_LIMIT
_MISSING = {"404", "NoSuchKey", "NotFound"}
_TAKEN = {"PreconditionFailed", "ConditionalRequestConflict"}


class PromotionError(StorageError):
    """Publishing or reading a promoted version failed; the message names the object and the cause."""


class PromotionConflict(PromotionError):  # noqa: N818 - the name the callers catch
    """The version already has a manifest: a promoted version is never rewritten, publish a new one."""


class VerificationError(PromotionError):
    """An object's bytes do not match its source (while publishing) or the manifest (afterwards)."""


@dataclass(frozen=True)
class Promotion:
    """What a deployment needs to pin a promoted version: where it is and the digest of its manifest."""

    uri: str
    digest: str
    manifest_uri: str
    object_count: int
    total_bytes: int


def version_uri(destination: str, version: str) -> str:
    if is_s3(destination):
        return f"{destination.rstrip('/')}/{version}/"
    return str(local_path(destination) / version)


def publish(
    store: Store,
    *,
    source: str,
    destination: str,
    documents: Mapping[str, bytes],
    version: str,
    metadata: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
    include: Callable[[str], bool] | None = None,
) -> Promotion:
    """Copy `source` (an s3:// prefix, a local directory or file; only the keys `include` accepts, when
    given) and `documents` (relative name -> content) to `<destination>/<version>/`, verify them, and
    write the manifest last."""
    try:
        check_version(version)
        manifest = Manifest(
            version=version,
            created_at=created_at or datetime.now(UTC),
            source=source,
            objects=[],
            metadata=dict(metadata or {}),
        )
        for name in documents:
            check_relative_key(name)
    except (ValueError, ValidationError) as err:  # pydantic's ValidationError is a ValueError
        raise PromotionError(f"cannot publish version {version!r}: {err}") from err
    target = _open_version(store, version_uri(destination, version))
    if target.exists(MANIFEST):
        raise PromotionConflict(
            f"{target.uri(MANIFEST)} exists: version {version!r} is already promoted; publish a new version"
        )
    files = [(key, uri) for key, uri in _source_files(store, source) if include is None or include(key)]
    keys = {key for key, _ in files}
    clashes = sorted((keys & set(documents)) | ({MANIFEST} & (keys | set(documents))))
    if clashes:
        raise PromotionError(f"cannot publish {source}: {', '.join(clashes)} would be written twice")

    written = [target.copy_in(store, key, uri) for key, uri in files]
    written += [target.write(name, [documents[name]]) for name in sorted(documents)]
    for stray in sorted(set(target.keys()) - {o.key for o in written} - {MANIFEST}):
        target.delete(stray)
    for expected in written:
        _check(target, expected)
    manifest.objects = sorted(written, key=lambda o: o.key)
    data = manifest.encode()
    target.create(MANIFEST, data)
    return _result(target, manifest, data)


def promoted_versions(store: Store, destination: str) -> list[str]:
    """The versions under `destination` that have a manifest, sorted; anything else is not published."""
    if is_s3(destination):
        prefix = destination.rstrip("/") + "/"
        with _step("list", prefix):
            keys = [uri[len(prefix) :] for uri in store.list(prefix)]
    else:
        root = local_path(destination)
        keys = [f"{p.parent.name}/{p.name}" for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    return sorted(v for v in map(version_of, keys) if v is not None)


def read_manifest(store: Store, version_uri: str) -> Manifest:
    return _read_manifest(_open_version(store, version_uri))[0]


def verify(store: Store, version_uri: str) -> Promotion:
    """Re-read every object the manifest lists; raises VerificationError naming the first that differs."""
    target = _open_version(store, version_uri)
    manifest, data = _read_manifest(target)
    for expected in manifest.objects:
        _check(target, expected)
    return _result(target, manifest, data)


# --- the steps ------------------------------------------------------------------------------------


def _read_manifest(target: _S3Version | _LocalVersion) -> tuple[Manifest, bytes]:
    uri = target.uri(MANIFEST)
    data = target.read(MANIFEST)
    if data is None:
        raise PromotionError(f"{uri} is missing: {target.uri('')} is not a promoted version")
    try:
        return Manifest.decode(data), data
    except ValidationError as err:
        raise PromotionError(f"{uri} is not a valid manifest: {err}") from err


def _check(target: _S3Version | _LocalVersion, expected: ManifestObject) -> None:
    found = target.sha256(expected.key)
    if found is None:
        raise VerificationError(f"{target.uri(expected.key)} is missing")
    sha256, size = found
    if (sha256, size) != (expected.sha256, expected.size):
        raise VerificationError(
            f"{target.uri(expected.key)} is corrupt: sha256 {sha256} ({size} bytes), "
            f"expected {expected.sha256} ({expected.size} bytes)"
        )


def _result(target: _S3Version | _LocalVersion, manifest: Manifest, data: bytes) -> Promotion:
    return Promotion(
        uri=target.uri(""),
        digest=digest_of(data),
        manifest_uri=target.uri(MANIFEST),
        object_count=len(manifest.objects),
        total_bytes=manifest.total_bytes,
    )


def _source_files(store: Store, source: str) -> list[tuple[str, str]]:
    """(key relative to the version, source URI) for every file to copy; local hidden files (the
    temporaries of an unfinished write) are skipped, as `Store.list` does."""
    root = local_path(source)
    if is_s3(source):
        prefix = source.rstrip("/") + "/"
        with _step("list", prefix):
            files = [(uri[len(prefix) :], uri) for uri in store.list(prefix) if not uri.endswith("/")]
    elif root.is_file():
        files = [(root.name, str(root))]
    else:
        found = (p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("."))
        files = [(p.relative_to(root).as_posix(), str(p)) for p in found]
    if not files:
        raise PromotionError(f"nothing to publish: no files under {source}")
    try:
        for key, _ in files:
            check_relative_key(key)
    except ValueError as err:
        raise PromotionError(f"cannot publish {source}: {err}") from err
    return files


@contextlib.contextmanager
def _step(action: str, uri: str) -> Iterator[None]:
    """Turns whatever boto3 or the OS raises into a PromotionError that says what failed where."""
    try:
        yield
    except PromotionError:
        raise
    except ClientError as err:
        raise PromotionError(f"cannot {action} {uri}: {_code(err)}") from err
    except (BotoCoreError, StorageError) as err:
        raise PromotionError(f"cannot {action} {uri}: {err}") from err
    except OSError as err:
        raise PromotionError(f"cannot {action} {uri}: {err.strerror or err}") from err


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "error"))


def _hash(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def _get(client: Any, bucket: str, key: str) -> tuple[Iterator[bytes], str]:
    response = client.get_object(Bucket=bucket, Key=key)
    return response["Body"].iter_chunks(CHUNK), response["ETag"]


def _b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _open_version(store: Store, uri: str) -> _S3Version | _LocalVersion:
    return _S3Version(store, uri) if is_s3(uri) else _LocalVersion(local_path(uri))


class _S3Version:
    """One version's folder in a bucket; keys are relative to it."""

    def __init__(self, store: Store, uri: str) -> None:
        self.store = store
        self.client = store._s3()  # the Store's cached client: one connection pool, one retry policy
        self.bucket, self.prefix = split(uri.rstrip("/") + "/")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def exists(self, key: str) -> bool:
        with _step("check", self.uri(key)):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as err:
                if _code(err) in _MISSING:
                    return False
                raise
        return True

    def copy_in(self, store: Store, key: str, source: str) -> ManifestObject:
        target = self.prefix + key
        if is_s3(source):
            bucket, source_key = split(source)
            with _step("read", source):
                chunks, etag = _get(self.client, bucket, source_key)
                sha256, size = _hash(chunks)
            copy_source = {"Bucket": bucket, "Key": source_key}
            with _step("copy", f"{source} to {self.uri(key)}"):
                if size <= SINGLE_REQUEST_LIMIT:
                    self.client.copy_object(
                        Bucket=self.bucket, Key=target, CopySource=copy_source, CopySourceIfMatch=etag
                    )
                else:
                    extra = {"CopySourceIfMatch": etag}
                    self.client.copy(copy_source, self.bucket, target, ExtraArgs=extra, Config=_MULTIPART)
            return ManifestObject(key=key, size=size, sha256=sha256)
        path = Path(source)
        with _step("read", source):
            sha256, size = _hash(_file_chunks(path))
        with _step("upload", f"{source} to {self.uri(key)}"):
            if size <= SINGLE_REQUEST_LIMIT:
                with path.open("rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket, Key=target, Body=body, ChecksumSHA256=_b64(sha256)
                    )
            else:
                extra = {"ChecksumAlgorithm": "SHA256"}
                self.client.upload_file(source, self.bucket, target, ExtraArgs=extra, Config=_MULTIPART)
        return ManifestObject(key=key, size=size, sha256=sha256)

    def write(self, key: str, chunks: Iterable[bytes]) -> ManifestObject:
        data = b"".join(chunks)
        sha256, size = _hash([data])
        with _step("write", self.uri(key)):
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ChecksumSHA256=_b64(sha256)
            )
        return ManifestObject(key=key, size=size, sha256=sha256)

    def keys(self) -> list[str]:
        prefix = self.uri("")
        with _step("list", prefix):
            return [uri[len(prefix) :] for uri in self.store.list(prefix)]

    def delete(self, key: str) -> None:
        with _step("delete", self.uri(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def read(self, key: str) -> bytes | None:
        with _step("read", self.uri(key)):
            chunks = self._chunks(key)
            return None if chunks is None else b"".join(chunks)

    def sha256(self, key: str) -> tuple[str, int] | None:
        with _step("verify", self.uri(key)):
            chunks = self._chunks(key)
            return None if chunks is None else _hash(chunks)

    def _chunks(self, key: str) -> Iterator[bytes] | None:
        try:
            return _get(self.client, self.bucket, self.prefix + key)[0]
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise

    def create(self, key: str, data: bytes) -> None:
        """Write `key` only if it does not exist. A 412 whose object holds our bytes is our own write whose
        response was lost and retried, not a conflict."""
        uri = self.uri(key)
        with _step("write", uri):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=_b64(hashlib.sha256(data).hexdigest()),
                )
            except ClientError as err:
                if _code(err) not in _TAKEN:
                    raise
                if self.read(key) != data:
                    raise PromotionConflict(f"{uri} was created meanwhile by another promotion") from err


class _LocalVersion:
    """One version's folder on a local or mounted file system; every write goes through a temporary file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, key: str) -> str:
        return str(self.root / key) if key else str(self.root)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def copy_in(self, store: Store, key: str, source: str) -> ManifestObject:
        with _step("copy", f"{source} to {self.uri(key)}"):
            chunks = _get(store._s3(), *split(source))[0] if is_s3(source) else _file_chunks(Path(source))
            return self._replace(key, chunks)

    def write(self, key: str, chunks: Iterable[bytes]) -> ManifestObject:
        with _step("write", self.uri(key)):
            return self._replace(key, chunks)

    def _replace(self, key: str, chunks: Iterable[bytes]) -> ManifestObject:
        tmp, sha256, size = self._temporary(key, chunks)
        os.replace(tmp, self.root / key)
        return ManifestObject(key=key, size=size, sha256=sha256)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        with _step("delete", self.uri(key)):
            (self.root / key).unlink(missing_ok=True)

    def read(self, key: str) -> bytes | None:
        with _step("read", self.uri(key)):
            try:
                return (self.root / key).read_bytes()
            except FileNotFoundError:
                return None

    def sha256(self, key: str) -> tuple[str, int] | None:
        path = self.root / key
        with _step("verify", self.uri(key)):
            return _hash(_file_chunks(path)) if path.is_file() else None

    def create(self, key: str, data: bytes) -> None:
        """link(2) fails when the name exists, like O_CREAT|O_EXCL, and the file it links is complete."""
        with _step("write", self.uri(key)):
            tmp = self._temporary(key, [data])[0]
            try:
                os.link(tmp, self.root / key)
            except FileExistsError as err:
                raise PromotionConflict(
                    f"{self.uri(key)} was created meanwhile by another promotion"
                ) from err
            finally:
                tmp.unlink()

    def _temporary(self, key: str, chunks: Iterable[bytes]) -> tuple[Path, str, int]:
        """A synced temporary file beside `key` holding `chunks`, with their sha256 and size."""
        path = self.root / key
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
