"""Types shared by FineTuneJob and EvalGate: object metadata, model and dataset sources, S3 storage,
and pod scheduling resources."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from finetune_api.base import (
    DNS_SUBDOMAIN,
    ApiModel,
    Digest,
    Name,
    ObjectName,
    Pattern,
    Quantity,
    Rule,
    ShortText,
    Uri,
)

HTTP_URL = Pattern(
    r"^https?://[^\s/]+(/[^\s]*)?$",
    "must be an http:// or https:// URL with a host, e.g. http://host:8080/path",
)
HttpUrl = Annotated[str, Field(max_length=512), HTTP_URL]
BUCKET = Pattern(
    r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$",
    "must be an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', starting and ending with a "
    "letter or digit",
)
KEY_PREFIX = Pattern(
    r"^([^/\s][^\s]*/)?$",
    "must be empty or a key prefix ending in '/', not starting with '/', without spaces (e.g. finetune/)",
)
EXTENDED_RESOURCE = Pattern(
    r"^[a-z0-9.\-]+/[a-z0-9.\-_]+$", "must be an extended resource name DOMAIN/NAME, e.g. nvidia.com/gpu"
)
ExtendedResourceName = Annotated[str, Field(max_length=253), EXTENDED_RESOURCE]


class ObjectMeta(ApiModel):
    """The part of metadata the API reads. Everything else the server adds is kept and ignored."""

    model_config = ConfigDict(extra="allow")

    name: ObjectName
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelSource(ApiModel):
    """Where model weights come from: an S3 prefix or a directory on a mounted volume."""

    uri: Uri
    revision: ShortText | None = Field(
        default=None, description="A revision label recorded in lineage (for example a git tag)."
    )
    digest: Digest | None = Field(
        default=None, description="sha256 of the model's manifest; the trainer refuses weights that differ."
    )


class DatasetFormat(StrEnum):
    """OpenAI fine-tuning JSONL formats, accepted as-is, plus image-label pairs.

    - chat: {"messages": [{"role", "content"}...]} (tools and weights allowed)
    - prompt_completion: {"prompt", "completion"}
    - preference: {"input": {"messages"}, "preferred_output": [...], "non_preferred_output": [...]}
    - vision_chat: chat messages whose content parts include {"type": "image_url", ...}
    - rft: {"messages": [...], ...reference fields the grader reads as {{item.*}}}
    - image_label: {"image": URI or data URL, "label": str}
    - auto: detected from the first rows
    """

    AUTO = "auto"
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    VISION_CHAT = "vision_chat"
    RFT = "rft"
    IMAGE_LABEL = "image_label"


class DatasetSource(ApiModel):
    uri: Uri
    format: DatasetFormat = DatasetFormat.AUTO
    sha256: Digest | None = Field(
        default=None, description="Expected sha256 of the file; validation fails if the data differs."
    )


class SecretKeys(ApiModel):
    """A Secret in the job's namespace holding S3 credentials. Only the reference lives in the spec."""

    name: ObjectName
    access_key_id_key: ShortText = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: ShortText = "AWS_SECRET_ACCESS_KEY"


class S3Storage(ApiModel):
    """Object storage for staging checkpoints, reports and promoted models."""

    endpoint: HttpUrl | None = Field(
        default=None, description="S3 API endpoint, e.g. http://seaweedfs.storage:8333; AWS when unset."
    )
    region: ShortText | None = None
    bucket: Annotated[str, Field(min_length=3, max_length=63), BUCKET]
    prefix: Annotated[str, Field(max_length=512), KEY_PREFIX] = Field(
        default="finetune/",
        description="Staging prefix inside the bucket; runs go under <prefix><namespace>/<name>/.",
    )
    credentials_secret_ref: SecretKeys | None = Field(
        default=None,
        description="Secret with the access keys. Unset: the pod's own identity (IRSA, workload identity).",
    )
    force_path_style: bool = True


class LocalObjectReference(ApiModel):
    name: ObjectName


class Toleration(ApiModel):
    key: ShortText | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: ShortText | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    cel_rules = (
        Rule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
            "value must be empty when operator is Exists",
            field_path=".value",
        ),
    )


class Affinity(ApiModel):
    """Kubernetes pod affinity, passed through to the pods unchanged (core/v1 Affinity)."""

    node_affinity: dict[str, Any] | None = None
    pod_affinity: dict[str, Any] | None = None
    pod_anti_affinity: dict[str, Any] | None = None


class Resources(ApiModel):
    """What each training pod asks the scheduler for."""

    gpus_per_node: Annotated[int, Field(ge=0, le=16)] = 1
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    cpu: Quantity | None = None
    memory: Quantity | None = None
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: Affinity | None = None
    priority_class_name: Annotated[str, Field(max_length=253), DNS_SUBDOMAIN] | None = None
    queue_name: Name | None = Field(
        default=None, description="Kueue LocalQueue; the workload is created suspended for Kueue to admit."
    )


class Threshold(ApiModel):
    """A bound on a metric: `min` for higher-is-better metrics, `max` for lower-is-better ones."""

    min: float | None = None
    max: float | None = None

    cel_rules = (Rule("has(self.min) != has(self.max)", "set exactly one of min or max"),)
