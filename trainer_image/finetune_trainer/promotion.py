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

This module owns that sequence and what each failure means. Every read and write goes through `Store`
(`finetune_trainer.storage`), whose primitives (streamed reads, checksummed and multipart uploads,
conditional copies and creates) serve S3 and local paths alike; only local folders are listed here.

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

import abc
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from finetune_api.promotion import (
    MANIFEST,
    Manifest,
    ManifestObject,
    check_relative_key,
    check_version,
    digest_of,
    version_of,
    version_uri,
)
from finetune_trainer.storage import StorageError, Store, Stream, is_s3, local_path, reraise, sha256_of

SINGLE_REQUEST_LIMIT = 5 * 1024**3  # the most one PutObject or CopyObject may carry


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

    written = [target.copy_in(key, uri) for key, uri in files]
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


def _read_manifest(target: _Version) -> tuple[Manifest, bytes]:
    uri = target.uri(MANIFEST)
    data = target.read(MANIFEST)
    if data is None:
        raise PromotionError(f"{uri} is missing: {target.uri('')} is not a promoted version")
    try:
        return Manifest.decode(data), data
    except ValidationError as err:
        raise PromotionError(f"{uri} is not a valid manifest: {err}") from err


def _check(target: _Version, expected: ManifestObject) -> None:
    found = target.sha256(expected.key)
    if found is None:
        raise VerificationError(f"{target.uri(expected.key)} is missing")
    sha256, size = found
    if (sha256, size) != (expected.sha256, expected.size):
        raise VerificationError(
            f"{target.uri(expected.key)} is corrupt: sha256 {sha256} ({size} bytes), "
            f"expected {expected.sha256} ({expected.size} bytes)"
        )


def _result(target: _Version, manifest: Manifest, data: bytes) -> Promotion:
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


def _step(action: str, uri: str) -> contextlib.AbstractContextManager[None]:
    """Turns whatever boto3 or the OS raises into a PromotionError that says what failed where."""
    return reraise(PromotionError, action, uri)


def _read_source(store: Store, uri: str) -> Stream:
    found = store.stream(uri)
    if found is None:
        raise PromotionError(f"cannot read {uri}: it is gone since it was listed")
    return found


# --- the version being written: one folder, on S3 or a local disk ----------------------------------


def _open_version(store: Store, uri: str) -> _Version:
    return _S3Version(store, uri) if is_s3(uri) else _LocalVersion(store, uri)


class _Version(abc.ABC):
    """One version's folder; keys are relative to it. S3 and local disks differ in how a source file gets
    in, how the folder is listed and what a taken manifest means."""

    def __init__(self, store: Store, uri: str) -> None:
        self.store = store
        self.base = uri.rstrip("/") + "/"

    def uri(self, key: str) -> str:
        return self.base + key

    def exists(self, key: str) -> bool:
        with _step("check", self.uri(key)):
            return self.store.exists(self.uri(key), strict=True)

    @abc.abstractmethod
    def copy_in(self, key: str, source: str) -> ManifestObject: ...

    def write(self, key: str, chunks: Iterable[bytes]) -> ManifestObject:
        with _step("write", self.uri(key)):
            sha256, size = self.store.write_chunks(self.uri(key), chunks)
        return ManifestObject(key=key, size=size, sha256=sha256)

    @abc.abstractmethod
    def keys(self) -> list[str]: ...

    def delete(self, key: str) -> None:
        with _step("delete", self.uri(key)):
            self.store.delete(self.uri(key))

    def read(self, key: str) -> bytes | None:
        with _step("read", self.uri(key)):
            found = self.store.stream(self.uri(key))
            return None if found is None else b"".join(found.chunks)

    def sha256(self, key: str) -> tuple[str, int] | None:
        with _step("verify", self.uri(key)):
            found = self.store.stream(self.uri(key))
            return None if found is None else sha256_of(found.chunks)

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> None:
        """Write `key` only if it does not exist; PromotionConflict if another promotion wrote it."""


class _S3Version(_Version):
    """A version's folder in a bucket: an object of the same store is copied by the server, a local file
    is uploaded with its SHA-256 for the server to check."""

    def copy_in(self, key: str, source: str) -> ManifestObject:
        target = self.uri(key)
        with _step("read", source):
            found = _read_source(self.store, source)
            sha256, size = sha256_of(found.chunks)
        multipart = size > SINGLE_REQUEST_LIMIT
        if found.etag is not None:  # an S3 object: copied only while it still holds the bytes hashed
            with _step("copy", f"{source} to {target}"):
                self.store.copy_object(source, target, if_match=found.etag, multipart=multipart)
        else:
            with _step("upload", f"{source} to {target}"):
                self.store.upload_file(Path(source), target, sha256=sha256, multipart=multipart)
        return ManifestObject(key=key, size=size, sha256=sha256)

    def keys(self) -> list[str]:
        prefix = self.uri("")
        with _step("list", prefix):
            return [uri[len(prefix) :] for uri in self.store.list(prefix)]

    def create(self, key: str, data: bytes) -> None:
        """A 412 whose object holds our bytes is our own write whose response was lost and retried, not a
        conflict."""
        uri = self.uri(key)
        with _step("write", uri):
            if not self.store.create(uri, data) and self.read(key) != data:
                raise PromotionConflict(f"{uri} was created meanwhile by another promotion")


class _LocalVersion(_Version):
    """A version's folder on a local or mounted file system; every file goes in through a synced
    temporary file, the manifest through link(2)."""

    def copy_in(self, key: str, source: str) -> ManifestObject:
        target = self.uri(key)
        with _step("copy", f"{source} to {target}"):
            sha256, size = self.store.write_chunks(target, _read_source(self.store, source).chunks)
        return ManifestObject(key=key, size=size, sha256=sha256)

    def keys(self) -> list[str]:
        """Every file, hidden ones included: an earlier attempt's temporaries are strays to delete."""
        root = local_path(self.base)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def create(self, key: str, data: bytes) -> None:
        with _step("write", self.uri(key)):
            if not self.store.create(self.uri(key), data):
                raise PromotionConflict(f"{self.uri(key)} was created meanwhile by another promotion")
