"""Building blocks shared by every API model: the base class and the schema annotations.

This module owns how a Python field becomes a CRD schema node: camelCase names, CEL rules
(`x-kubernetes-validations`), string formats with a readable message (`Pattern`), list-map keys,
int-or-string quantities and `"auto"` scalars. It imports
pydantic only and performs no I/O. The structural conversion of a whole model lives in `crd.py`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Rule:
    """A CEL validation rule, enforced by the API server and evaluated offline by `finetune validate`.

    `field_path` (relative to the node the rule sits on, e.g. `.dpo`) makes the server report the error
    against that field instead of the parent object.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"] | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """Base of every API object: camelCase in YAML, unknown fields rejected, assignments validated.

    Subclasses declare CEL rules in `cel_rules`; they land on the model's schema node. A model whose
    `immutable_except` is set gets one transition rule per other field, so that field cannot change after
    creation (adding or removing an optional field counts as a change).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()
    immutable_except: ClassVar[frozenset[str] | None] = None
    immutable_hint: ClassVar[str] = "create a new object to change it"

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        rules = [r.to_schema() for r in (*cls.cel_rules, *cls._immutability_rules())]
        if rules:
            target["x-kubernetes-validations"] = rules
        return json_schema

    @classmethod
    def _immutability_rules(cls) -> Iterable[Rule]:
        if cls.immutable_except is None:
            return
        for name, info in cls.model_fields.items():
            if name in cls.immutable_except:
                continue
            key = info.alias or name
            if info.is_required():
                rule = f"self.{key} == oldSelf.{key}"
            else:
                rule = (
                    f"has(self.{key}) == has(oldSelf.{key}) && "
                    f"(!has(self.{key}) || self.{key} == oldSelf.{key})"
                )
            yield Rule(rule, f"{key} is immutable: {cls.immutable_hint}", field_path=f".{key}")

    def dump(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules(*items: Rule) -> WithRules:
    """Annotation that puts CEL rules on a field's own schema node (`self` is the field's value)."""
    return WithRules(items)


@dataclass(frozen=True)
class WithRules:
    items: tuple[Rule, ...]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        target.setdefault("x-kubernetes-validations", []).extend(r.to_schema() for r in self.items)
        return json_schema


@dataclass(frozen=True)
class ListMapKeys:
    """Marks a list of objects as a Kubernetes list-map keyed by `keys`: entries are unique by key and
    server-side apply merges them by key. Pydantic enforces the same uniqueness offline."""

    keys: tuple[str, ...]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        json_schema["x-kubernetes-list-type"] = "map"
        json_schema["x-kubernetes-list-map-keys"] = list(self.keys)
        return json_schema


def _unique_by(attr: str, label: str) -> Callable[[list[Any]], list[Any]]:
    def check(items: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for item in items:
            value = getattr(item, attr)
            if value in seen:
                raise ValueError(f"duplicate {label} {value!r}: each entry needs a unique {label}")
            seen.add(value)
        return items

    return check


def list_map(key: str, attr: str | None = None) -> tuple[ListMapKeys, AfterValidator]:
    """Annotations for a list-map keyed by one field (`key` in YAML, `attr` in Python)."""
    return ListMapKeys((key,)), AfterValidator(_unique_by(attr or key, key))


# --- string formats -------------------------------------------------------------------------------


@functools.cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


@dataclass(frozen=True)
class Pattern:
    """Annotation for a string format: a regular expression and the one readable description of it.

    The API server's error for an OpenAPI `pattern` prints the regular expression and cannot carry a
    message, so the schema gets no `pattern`: a CEL rule `self.matches(...)` with `message` checks the same
    expression (RE2 and Python's `re` agree on these), and pydantic raises the same message, so the server
    and `finetune validate` say the same thing. `message` completes "<field>: Invalid value: ...: ", so it
    starts with "must". Pair it with a `max_length`: the server estimates a rule's cost from it.
    `int_or_string` lets an integer through (the expression then judges strings only).
    """

    regex: str
    message: str
    int_or_string: bool = False

    def __post_init__(self) -> None:
        if "'" in self.regex or not self.regex.startswith("^") or not self.regex.endswith("$"):
            raise ValueError(f"{self.regex}: an anchored expression without ' (it sits in a CEL r'' string)")

    @property
    def rule(self) -> Rule:
        check = f"self.matches(r'{self.regex}')"
        return Rule(f"type(self) != string || {check}" if self.int_or_string else check, self.message)

    def matches(self, value: str) -> bool:
        return _compiled(self.regex).search(value) is not None

    def _check(self, value: Any) -> Any:
        if isinstance(value, str) and not self.matches(value):
            raise ValueError(self.message)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, core_schema_: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema_)
        target = handler.resolve_ref_schema(json_schema)
        target.setdefault("x-kubernetes-validations", []).append(self.rule.to_schema())
        return json_schema


DNS_LABEL = Pattern(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit "
    "(e.g. support-assistant)",
)
DNS_SUBDOMAIN = Pattern(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "must be a DNS subdomain: lowercase letters, digits, '-' and '.', each dot-separated part starting "
    "and ending with a letter or digit (e.g. team-a.example)",
)
PASCAL_CASE = Pattern(
    r"^[A-Z][A-Za-z0-9]*$", "must be PascalCase: a capital letter, then letters and digits (e.g. GatePassed)"
)
SHA256 = Pattern(
    r"^(sha256:)?[a-f0-9]{64}$",
    "must be a SHA-256 digest: 64 lowercase hex digits, optionally after sha256: (e.g. sha256:3b2f...)",
)
IMAGE = Pattern(
    r"^[^\s]+$", "must be a container image reference without spaces, e.g. ghcr.io/acme/trainer:1.4"
)

# --- scalar types ---------------------------------------------------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=63), DNS_LABEL]
ObjectName = Annotated[str, Field(min_length=1, max_length=253), DNS_SUBDOMAIN]
ShortText = Annotated[str, Field(max_length=256)]
Text = Annotated[str, Field(max_length=4096)]
Digest = Annotated[str, Field(max_length=71), SHA256]
Image = Annotated[str, Field(min_length=1, max_length=512), IMAGE]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# A model or dataset location: an S3 object or prefix, an absolute path on a volume mounted into the pod
# (PVC, hostPath, image volume), or `builtin://` for what the trainer image ships (a small base model and
# example datasets; `finetune_trainer.builtin`). Relative paths are refused: a pod has no meaningful
# working dir.
URI = Pattern(
    r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?|/[^\s]*|builtin://[a-z0-9][a-z0-9._\-/]*)$",
    "must be s3://BUCKET/KEY (a bucket of 3-63 lowercase letters, digits, '.' or '-'), an absolute path "
    "on a mounted volume (/data/...), or builtin://NAME; without spaces",
)
Uri = Annotated[
    str,
    Field(
        min_length=2,
        max_length=1024,
        description="s3://bucket/key, a path on a mounted volume, or builtin://NAME (in the trainer image).",
    ),
    URI,
]

# Kubernetes resource quantity ("8", "500m", "64Gi"); YAML integers are accepted as for core resources.
QUANTITY = Pattern(
    r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
    "must be a Kubernetes quantity: a number with an optional suffix, such as 8, 500m, 1.5 or 64Gi",
    int_or_string=True,
)


def _quantity(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    Field(max_length=64),
    WithJsonSchema(
        {
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
            "description": "A Kubernetes quantity such as 8, 500m or 64Gi.",
        }
    ),
    QUANTITY,
]

DURATION = Pattern(
    r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
    "must be a duration of hours, minutes and seconds in that order, such as 90m, 24h or 1h30m",
)
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _check_duration(value: str) -> str:
    if not value or parse_duration(value) <= 0:
        raise ValueError("must be a positive duration such as 90m, 24h or 1h30m")
    return value


Duration = Annotated[
    str,
    Field(max_length=32, description="A duration such as 90m, 24h or 1h30m."),
    DURATION,
    AfterValidator(_check_duration),
    rules(Rule("self.matches('[1-9]')", "must be a positive duration such as 90m, 24h or 1h30m")),
]


def parse_duration(value: str) -> int:
    """Seconds in a `Duration` string ("1h30m" -> 5400)."""
    match = _DURATION_RE.fullmatch(value)
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class TokenLengths(ApiModel):
    """Estimated tokens of one training row (UTF-8 bytes / 3, rounded up; `finetune_api.hyperparameters`),
    as the data gates measured them: what `"auto"` sizes micro-batches and the expected time by."""

    mean: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class AutoNumber:
    """Annotation for a number that may also be the string "auto" (resolved later from dataset size).

    Pydantic checks the bounds. A structural schema has no number-or-string type. Integers become
    int-or-string with one CEL rule for type and range. Floats must leave the type open, and CEL cannot see
    an untyped node, so their schema says it with value validations instead: "auto", or a number in range.
    Range keywords pass any non-number, so the second branch also refuses strings (`maxLength: 0` and not
    "").
    """

    kind: Literal["integer", "number"]
    lo: float
    hi: float
    strict_lo: bool = False

    @property
    def bounds(self) -> str:
        op = ">" if self.strict_lo else ">="
        noun = "an integer" if self.kind == "integer" else "a number"
        return f"{noun} {op} {self.lo:g} and <= {self.hi:g}"

    def _check(self, value: Any) -> Any:
        if value == "auto":
            return value
        ok_lo = value > self.lo if self.strict_lo else value >= self.lo
        if not (ok_lo and value <= self.hi):
            raise ValueError(f'must be "auto" or {self.bounds}')
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, core_schema_: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        description = f'"auto", or {self.bounds}.'
        if self.kind == "number":
            in_range: dict[str, Any] = {
                "minimum": self.lo,
                "maximum": self.hi,
                "maxLength": 0,
                "not": {"enum": [""]},
            }
            if self.strict_lo:
                in_range["exclusiveMinimum"] = True
            return {
                "x-kubernetes-preserve-unknown-fields": True,
                "description": description,
                "anyOf": [{"enum": ["auto"]}, in_range],
            }
        op = ">" if self.strict_lo else ">="
        check = f"self {op} {int(self.lo)} && self <= {int(self.hi)}"
        return {
            "x-kubernetes-int-or-string": True,
            "description": description,
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == string ? self == 'auto' : ({check})",
                    "message": f'must be "auto" or {self.bounds}',
                }
            ],
        }


# --- CRD declarations (turned into CustomResourceDefinitions by crd.py) ----------------------------


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class CrdNames:
    """What a custom resource model needs to declare to become a CRD."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("finetune",)
    description: str = ""
    extra_root_properties: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"
