"""The trainer's storage on a real S3 (SeaweedFS) and on local paths: the same calls, the same results,
and a marker written after everything it vouches for."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from finetune_trainer.storage import StorageError, Store, join
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client


@pytest.fixture(params=["s3", "local"])
def root(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Store, str]:
    if request.param == "local":
        return Store(), f"file://{tmp_path}/run/"
    s3: S3Server = request.getfixturevalue("s3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    s3_client(s3.endpoint).create_bucket(Bucket=bucket)
    return Store(endpoint=s3.endpoint), f"s3://{bucket}/run/"


def test_round_trip(root: tuple[Store, str], tmp_path: Path) -> None:
    store, prefix = root
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "tokenizer").mkdir(parents=True)
    for name, body in {
        "COMPLETE": b"{}",
        "adapter.safetensors": b"w" * 1000,
        "tokenizer/vocab.json": b"{}",
    }.items():
        (checkpoint / name).write_bytes(body)
    written: list[str] = []
    original = store.write_bytes

    def recording(uri: str, data: bytes) -> None:
        written.append(uri.rsplit("/", 1)[-1])
        original(uri, data)

    object.__setattr__(store, "write_bytes", recording)
    store.upload_dir(checkpoint, join(prefix, "step-1"), last="COMPLETE")
    assert written[-1] == "COMPLETE"  # the marker goes last
    listed = [
        uri.removeprefix(prefix.removeprefix("file://")).removeprefix(prefix) for uri in store.list(prefix)
    ]
    assert listed == ["step-1/COMPLETE", "step-1/adapter.safetensors", "step-1/tokenizer/vocab.json"]
    copy = tmp_path / "copy"
    store.download_prefix(join(prefix, "step-1/"), copy)
    assert (copy / "adapter.safetensors").read_bytes() == b"w" * 1000
    assert (copy / "tokenizer" / "vocab.json").exists()
    assert store.exists(join(prefix, "step-1/COMPLETE"))
    store.delete(join(prefix, "step-1/COMPLETE"))
    assert not store.exists(join(prefix, "step-1/COMPLETE"))
    with pytest.raises(StorageError, match=r"cannot read .*absent\.json"):
        store.read_bytes(join(prefix, "absent.json"))


def test_an_unreachable_endpoint_is_a_storage_error_naming_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = Store("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(StorageError, match=r"cannot read s3://data/train\.jsonl: Could not connect"):
        store.read_bytes("s3://data/train.jsonl")
    with pytest.raises(StorageError, match=r"cannot write s3://data/out\.json: Could not connect"):
        store.write_bytes("s3://data/out.json", b"{}")
