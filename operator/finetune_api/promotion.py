"""What a promoted model looks like in object storage, and the manifest that makes a version real.

Promotion copies a checkpoint that passed its gates from a run's staging prefix to a published
destination, one folder per version, then writes the manifest last:

    <destination>/<version>/...                   every file of the checkpoint, same relative keys
    <destination>/<version>/MODEL_CARD.md         documents the promoting job adds
    <destination>/<version>/lineage.json
    <destination>/<version>/eval/report.json
    <destination>/<version>/eval/report.html
    <destination>/<version>/MANIFEST.json         every object above (key, size, sha256); written last,
                                                  create-only, so a version is never rewritten

S3 has no rename, so a version cannot appear at once; the manifest plays that role. A version without
a manifest is a failed or running promotion and readers ignore it. The version's digest is `sha256:`
followed by the SHA-256 of the manifest's bytes: the manifest names every object's hash, so the digest
pins the whole version. This module is the contract both sides share (the trainer writes, the operator
reads): it imports pydantic only and performs no I/O.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from finetune_api.base import ApiModel, Pattern, ShortText

MANIFEST = "MANIFEST.json"
MODEL_CARD = "MODEL_CARD.md"
LINEAGE = "lineage.json"
EVAL_REPORT_JSON = "eval/report.json"
EVAL_REPORT_HTML = "eval/report.html"

# One path segment: a version is a folder, never a path, and sorts and reads well ("v3", "2026-11-23-a1b2").
VERSION = Pattern(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
    "must be one path segment of letters, digits, '.', '_' or '-' (at most 128, starting with a letter "
    "or digit)",
)


def check_version(version: str) -> str:
    if not VERSION.matches(version):
        raise ValueError(f"invalid version {version!r}: {VERSION.message}")
    return version


def check_relative_key(key: str) -> str:
    """A key inside a version: relative, no empty, `.` or `..` segments, so it names the same file on S3
    and on a local disk and cannot escape the version's folder."""
    segments = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(s in {"", ".", ".."} for s in segments):
        raise ValueError(f"invalid object key {key!r}: a relative path without empty, '.' or '..' parts")
    return key


def version_uri(destination: str, version: str) -> str:
    """Where version `version` of `destination` lives: an S3 prefix or a local folder alike (a `file://`
    URI or a plain path, kept as given), always ending in '/'."""
    return f"{destination.rstrip('/')}/{check_version(version)}/"


def manifest_key(version: str) -> str:
    """The manifest's key relative to the destination."""
    return f"{check_version(version)}/{MANIFEST}"


def version_of(key: str) -> str | None:
    """The version of a `<version>/MANIFEST.json` key relative to the destination; None for any other."""
    version, _, name = key.partition("/")
    if name != MANIFEST or not VERSION.matches(version):
        return None
    return version


def digest_of(manifest_bytes: bytes) -> str:
    """The version's digest: what a deployment pins to know it serves exactly what was promoted."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


SHA256_HEX = Pattern(r"^[a-f0-9]{64}$", "must be a SHA-256 digest: 64 lowercase hex digits")
Sha256Hex = Annotated[str, Field(max_length=64), SHA256_HEX]
RelativeKey = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(check_relative_key)]
Version = Annotated[str, Field(max_length=128), VERSION]


class ManifestObject(ApiModel):
    key: RelativeKey = Field(description="Relative to the version's folder.")
    size: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex


def _unique_keys(objects: list[ManifestObject]) -> list[ManifestObject]:
    seen: set[str] = set()
    for o in objects:
        if o.key == MANIFEST or o.key in seen:
            raise ValueError(f"object key {o.key!r} is listed twice or names the manifest itself")
        seen.add(o.key)
    return objects


class Manifest(ApiModel):
    """The list of what a version holds. An object not listed here is not part of the version."""

    format_version: Literal[1] = 1
    version: Version
    created_at: datetime
    source: Annotated[str, Field(max_length=1024)] = Field(
        description="Where the checkpoint was copied from."
    )
    objects: Annotated[list[ManifestObject], AfterValidator(_unique_keys)]
    metadata: dict[Annotated[str, Field(max_length=253)], ShortText] = Field(
        default_factory=dict, description="The caller's labels, e.g. the promoting job's uid."
    )

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def encode(self) -> bytes:
        """The bytes written to MANIFEST.json; the digest is computed over exactly these."""
        return (json.dumps(self.dump(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)
