"""Promotion on a real S3 (SeaweedFS) and on local paths: every object copied and verified, the manifest
written last and only once, and no version visible after a failure part way."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from finetune_api.promotion import (
    EVAL_REPORT_HTML,
    EVAL_REPORT_JSON,
    LINEAGE,
    MANIFEST,
    MODEL_CARD,
    version_uri,
)
from finetune_trainer import promotion
from finetune_trainer.promotion import (
    PromotionConflict,
    PromotionError,
    VerificationError,
    promoted_versions,
    publish,
    read_manifest,
    verify,
)
from finetune_trainer.storage import Store
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client

CHECKPOINT = {
    "adapter_model.safetensors": bytes(range(256)) * 16,
    "adapter_config.json": b'{"r": 8}',
    "tokenizer/tokenizer.json": b'{"model": {"vocab": {}}}' * 40,
    "COMPLETE": b'{"step": 12}',
}
DOCUMENTS = {
    MODEL_CARD: b"# orders-assistant v1\n",
    LINEAGE: b'{"job": "demo"}',
    EVAL_REPORT_JSON: b'{"passed": true}',
    EVAL_REPORT_HTML: b"<html>passed</html>",
}
WRITES = ("PutObject", "CopyObject", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload")


@dataclass(frozen=True)
class ClientStore(Store):
    """A Store on its own client, so a test's event hooks and retry policy stay with that test."""

    client: Any = None

    def _s3(self) -> Any:
        return self.client


@dataclass
class Bucket:
    store: ClientStore
    name: str
    calls: list[tuple[str, str, str | None]]  # (operation, key, If-None-Match) of every request

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [(op, key) for op, key, _ in self.calls if op in WRITES]

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        self.store.client.meta.events.register(event, handler)


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    name = f"promote-{uuid.uuid4().hex[:8]}"
    s3_client(s3.endpoint).create_bucket(Bucket=name)
    # One attempt: a stopped server fails the request at once instead of after backed-off retries.
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", config=config)
    found = Bucket(ClientStore(endpoint=s3.endpoint, client=client), name, [])

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        found.calls.append(
            (model.name, params["url_path"].lstrip("/"), params["headers"].get("If-None-Match"))
        )

    found.on("before-call.s3.*", record)
    return found


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    root = tmp_path / "checkpoint"
    for name, body in CHECKPOINT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    return root


def staged(bucket: Bucket) -> str:
    """The checkpoint in a run's staging prefix, beside a later one whose name starts the same."""
    prefix = "runs/demo/checkpoints/step-000000012/"
    for name, body in CHECKPOINT.items():
        bucket.store.write_bytes(bucket.uri(prefix + name), body)
    bucket.store.write_bytes(bucket.uri("runs/demo/checkpoints/step-0000000120/COMPLETE"), b"{}")
    bucket.calls.clear()  # tests look at the promotion's requests only
    return bucket.uri(prefix)


def destination(bucket: Bucket | None, tmp_path: Path) -> str:
    return bucket.uri("models/orders") if bucket else f"file://{tmp_path}/models/orders"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_keys(store: Store, uri: str) -> list[str]:
    """The keys under a version, relative to it, on S3 or a local folder."""
    root = uri if uri.startswith("s3://") else uri.rstrip("/") + "/"
    return [found.removeprefix(root) for found in store.list(root)]


def fail_nth_write(bucket: Bucket, n: int) -> None:
    """The server answers the n-th write with 503 SlowDown (the request never reaches it)."""
    seen = [0]

    def maybe_fail(model: Any, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if model.name not in WRITES:
            return None
        seen[0] += 1
        if seen[0] != n:
            return None
        error = {"Error": {"Code": "SlowDown", "Message": "injected"}, "ResponseMetadata": {}}
        return AWSResponse("http://injected", 503, {}, None), error

    bucket.on("before-call.s3.*", maybe_fail)


def test_publish_from_s3_copies_server_side_and_writes_the_manifest_last(bucket: Bucket) -> None:
    result = publish(
        bucket.store,
        source=staged(bucket),
        destination=bucket.uri("models/orders"),
        documents=DOCUMENTS,
        version="v1",
        metadata={"jobUid": "5f0c"},
    )
    version = "models/orders/v1/"
    assert result.uri == bucket.uri(version)
    assert result.manifest_uri == bucket.uri(version + MANIFEST)
    assert result.object_count == len(CHECKPOINT) + len(DOCUMENTS)
    assert result.total_bytes == sum(map(len, [*CHECKPOINT.values(), *DOCUMENTS.values()]))

    # checkpoint files are copied by the server, documents uploaded, the manifest created last and only-if-new
    copied = sorted(key.removeprefix(version) for op, key in bucket.writes if op == "CopyObject")
    uploaded = sorted(key.removeprefix(version) for op, key in bucket.writes[:-1] if op == "PutObject")
    assert copied == sorted(CHECKPOINT)
    assert uploaded == sorted(DOCUMENTS)
    assert bucket.writes[-1] == ("PutObject", version + MANIFEST)
    assert [inm for op, key, inm in bucket.calls if key.endswith(MANIFEST) and op == "PutObject"] == ["*"]

    raw = bucket.store.read_bytes(result.manifest_uri)
    assert result.digest == "sha256:" + sha256(raw)
    manifest = read_manifest(bucket.store, result.uri)
    assert manifest.version == "v1"
    assert manifest.metadata == {"jobUid": "5f0c"}
    expected = {**CHECKPOINT, **DOCUMENTS}
    assert {o.key: (o.size, o.sha256) for o in manifest.objects} == {
        key: (len(body), sha256(body)) for key, body in expected.items()
    }
    assert sorted(version_keys(bucket.store, result.uri)) == sorted([*expected, MANIFEST])
    for key, body in expected.items():
        assert bucket.store.read_bytes(result.uri + key) == body
    assert "step-0000000120" not in raw.decode()  # the sibling checkpoint stays out
    assert verify(bucket.store, result.uri) == result
    assert promoted_versions(bucket.store, bucket.uri("models/orders")) == ["v1"]


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_publish_from_a_local_directory(
    kind: str, checkpoint: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket: Bucket | None = request.getfixturevalue("bucket") if kind == "s3" else None
    store = bucket.store if bucket else Store()
    target = destination(bucket, tmp_path)
    result = publish(store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v2")

    assert result.uri == version_uri(target, "v2")
    expected = {**CHECKPOINT, **DOCUMENTS}
    assert sorted(version_keys(store, result.uri)) == sorted([*expected, MANIFEST])
    manifest = json.loads(store.read_bytes(result.manifest_uri))
    assert {o["key"]: o["sha256"] for o in manifest["objects"]} == {k: sha256(b) for k, b in expected.items()}
    assert verify(store, result.uri).digest == result.digest
    assert promoted_versions(store, target) == ["v2"]
    if bucket:  # uploads carry their sha256 for the server to check; the manifest is the last write
        assert [op for op, _ in bucket.writes] == ["PutObject"] * (len(expected) + 1)
        assert bucket.writes[-1][1].endswith(f"v2/{MANIFEST}")


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_a_promoted_version_is_never_rewritten(
    kind: str,
    checkpoint: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket: Bucket | None = request.getfixturevalue("bucket") if kind == "s3" else None
    store = bucket.store if bucket else Store()
    target = destination(bucket, tmp_path)
    first = publish(store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v1")
    manifest = store.read_bytes(first.manifest_uri)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"retrained")

    # refused before anything is written
    writes_before = len(bucket.writes) if bucket else 0
    with pytest.raises(PromotionConflict, match=f"{first.manifest_uri} exists"):
        publish(store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v1")
    assert (len(bucket.writes) if bucket else 0) == writes_before
    assert verify(store, first.uri) == first
    (checkpoint / "adapter_model.safetensors").write_bytes(CHECKPOINT["adapter_model.safetensors"])

    # a promotion that passed the check just before another one finished: the create itself refuses
    # (SeaweedFS answers If-None-Match: * with 412; locally link(2) finds the name taken)
    monkeypatch.setattr(promotion._S3Version, "exists", lambda *_: False)
    monkeypatch.setattr(promotion._LocalVersion, "exists", lambda *_: False)
    with pytest.raises(PromotionConflict, match="created meanwhile"):
        publish(store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v1")
    assert store.read_bytes(first.manifest_uri) == manifest
    assert verify(store, first.uri) == first


def test_the_server_going_away_mid_promotion_leaves_no_version(s3: S3Server, bucket: Bucket) -> None:
    source = staged(bucket)
    target = bucket.uri("models/orders")
    copies = [0]

    def stop_after_second_copy(model: Any, **_: Any) -> None:
        if model.name == "CopyObject":
            copies[0] += 1
            if copies[0] == 2:
                s3.stop()

    bucket.on("after-call.s3.CopyObject", stop_after_second_copy)
    try:
        with pytest.raises(PromotionError, match=r"cannot (copy|read) s3://.*Could not connect"):
            publish(bucket.store, source=source, destination=target, documents=DOCUMENTS, version="v1")
    finally:
        s3.stop()
        s3.start()
    assert copies[0] == 2
    assert len(version_keys(bucket.store, bucket.uri("models/orders/v1/"))) == 2  # leftovers, no manifest
    assert promoted_versions(bucket.store, target) == []
    with pytest.raises(PromotionError, match=f"{MANIFEST} is missing"):
        read_manifest(bucket.store, version_uri(target, "v1"))

    retried = publish(bucket.store, source=source, destination=target, documents=DOCUMENTS, version="v1")
    assert verify(bucket.store, retried.uri) == retried
    assert promoted_versions(bucket.store, target) == ["v1"]


@pytest.mark.parametrize("failing", [1, 3, 9], ids=["first-write", "third-write", "manifest"])
def test_a_failed_write_leaves_no_version_and_a_retry_completes(bucket: Bucket, failing: int) -> None:
    source = staged(bucket)
    target = bucket.uri("models/orders")
    fail_nth_write(bucket, failing)
    with pytest.raises(PromotionError, match=r"cannot (copy|write) .*: SlowDown"):
        publish(bucket.store, source=source, destination=target, documents=DOCUMENTS, version="v1")
    assert len(bucket.writes) == failing  # the injected failure was the last write tried
    assert promoted_versions(bucket.store, target) == []
    version = version_uri(target, "v1")
    assert not bucket.store.exists(version + MANIFEST)

    # what an earlier attempt left behind, wrong bytes and a file no longer in the checkpoint, is replaced
    bucket.store.write_bytes(version + "adapter_model.safetensors", b"half")
    bucket.store.write_bytes(version + "old-shard.safetensors", b"stale")
    retried = publish(bucket.store, source=source, destination=target, documents=DOCUMENTS, version="v1")
    assert verify(bucket.store, retried.uri) == retried
    assert "old-shard.safetensors" not in version_keys(bucket.store, version)
    assert promoted_versions(bucket.store, target) == ["v1"]

    manifest = bucket.store.read_bytes(retried.manifest_uri)
    with pytest.raises(PromotionConflict, match=version + MANIFEST):
        publish(bucket.store, source=source, destination=target, documents=DOCUMENTS, version="v1")
    assert bucket.store.read_bytes(retried.manifest_uri) == manifest


def test_an_object_changed_before_verification_fails_the_promotion(s3: S3Server, bucket: Bucket) -> None:
    target = bucket.uri("models/orders")
    other = s3_client(s3.endpoint)

    def corrupt_after_copy(**_: Any) -> None:
        key = bucket.calls[-1][1]
        if key.endswith("adapter_model.safetensors"):
            other.put_object(Bucket=bucket.name, Key=key, Body=b"bit rot")

    bucket.on("after-call.s3.CopyObject", corrupt_after_copy)
    with pytest.raises(VerificationError, match=r"models/orders/v1/adapter_model\.safetensors is corrupt"):
        publish(bucket.store, source=staged(bucket), destination=target, documents=DOCUMENTS, version="v1")
    assert promoted_versions(bucket.store, target) == []
    assert not bucket.store.exists(version_uri(target, "v1") + MANIFEST)


def test_a_file_that_changes_during_its_upload_is_refused_by_the_server(
    bucket: Bucket, checkpoint: Path
) -> None:
    """Uploads carry the sha256 of the bytes hashed; SeaweedFS checks it (BadDigest), as S3 does."""
    weights = checkpoint / "adapter_model.safetensors"

    def rewrite_before_sending(params: dict[str, Any], **_: Any) -> None:
        if params["url_path"].endswith(weights.name):
            weights.write_bytes(bytes(reversed(CHECKPOINT[weights.name])))  # same size, other bytes

    bucket.on("before-call.s3.PutObject", rewrite_before_sending)
    target = bucket.uri("models/orders")
    with pytest.raises(PromotionError, match=rf"cannot upload {weights} to .*{weights.name}: BadDigest"):
        publish(bucket.store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v1")
    assert promoted_versions(bucket.store, target) == []
    assert weights.name not in version_keys(bucket.store, version_uri(target, "v1"))


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_verify_names_a_tampered_or_missing_object(
    kind: str, checkpoint: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket: Bucket | None = request.getfixturevalue("bucket") if kind == "s3" else None
    store = bucket.store if bucket else Store()
    target = destination(bucket, tmp_path)
    result = publish(store, source=str(checkpoint), destination=target, documents=DOCUMENTS, version="v1")
    sep = "" if bucket else "/"

    tampered = b'{"passed": false}'
    store.write_bytes(result.uri + sep + EVAL_REPORT_JSON, tampered)
    with pytest.raises(
        VerificationError, match=rf"v1/eval/report\.json is corrupt: sha256 {sha256(tampered)}"
    ):
        verify(store, result.uri)
    store.write_bytes(result.uri + sep + EVAL_REPORT_JSON, DOCUMENTS[EVAL_REPORT_JSON])
    assert verify(store, result.uri) == result
    store.delete(result.uri + sep + "tokenizer/tokenizer.json")
    with pytest.raises(VerificationError, match=r"v1/tokenizer/tokenizer\.json is missing"):
        verify(store, result.uri)


def test_objects_above_one_request_go_multipart(
    bucket: Bucket, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(promotion, "SINGLE_REQUEST_LIMIT", 1024)
    target = bucket.uri("models/orders")
    from_s3 = publish(bucket.store, source=staged(bucket), destination=target, documents={}, version="v1")
    from_disk = publish(bucket.store, source=str(checkpoint), destination=target, documents={}, version="v2")
    operations = {op for op, _ in bucket.writes}
    assert {"UploadPartCopy", "UploadPart", "CompleteMultipartUpload"} <= operations
    assert verify(bucket.store, from_s3.uri).digest == from_s3.digest
    assert verify(bucket.store, from_disk.uri).digest == from_disk.digest
    assert (
        bucket.store.read_bytes(from_s3.uri + "adapter_model.safetensors")
        == CHECKPOINT["adapter_model.safetensors"]
    )


@pytest.mark.parametrize(
    ("version", "documents", "message"),
    [
        ("../v1", DOCUMENTS, "invalid version"),
        ("v1", {"../escape.md": b"x"}, "invalid object key"),
        ("v1", {MANIFEST: b"{}"}, "MANIFEST.json would be written twice"),
        ("v1", {"COMPLETE": b"{}"}, "COMPLETE would be written twice"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    checkpoint: Path, tmp_path: Path, version: str, documents: dict[str, bytes], message: str
) -> None:
    target = tmp_path / "models"
    with pytest.raises(PromotionError, match=message):
        publish(
            Store(), source=str(checkpoint), destination=str(target), documents=documents, version=version
        )
    assert not target.exists()


def test_an_empty_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromotionError, match="nothing to publish"):
        publish(
            Store(),
            source=str(tmp_path / "empty"),
            destination=str(tmp_path / "m"),
            documents={},
            version="v1",
        )
    assert promoted_versions(Store(), str(tmp_path / "m")) == []
