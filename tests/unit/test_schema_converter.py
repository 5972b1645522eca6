"""The pydantic -> structural schema converter on small models: one behaviour per construct."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field

from finetune_api.base import ApiModel, Rule
from finetune_api.crd import SchemaError, structural_schema


class Inner(ApiModel):
    size: Annotated[int, Field(gt=0)]


class A(ApiModel):
    kind: Literal["a"]
    text: str


class B(ApiModel):
    kind: Literal["b"]
    text: str
    extra: int = 1

    cel_rules = (Rule("self.extra < 10", "extra below 10"),)


class Outer(ApiModel):
    snake_name: Inner | None = None
    choice: Annotated[A | B, Field(discriminator="kind")]


def test_optional_becomes_nullable_with_camel_case_and_no_titles() -> None:
    schema = structural_schema(Outer)
    inner = schema["properties"]["snakeName"]
    assert inner["nullable"] is True
    assert inner["type"] == "object"
    assert "title" not in inner
    assert inner["properties"]["size"] == {"type": "integer", "minimum": 0, "exclusiveMinimum": True}
    assert schema["required"] == ["choice"]


def test_discriminated_union_is_one_object_with_guarded_rules() -> None:
    choice = structural_schema(Outer)["properties"]["choice"]
    assert choice["properties"]["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert choice["properties"]["text"] == {"type": "string"}
    assert choice["required"] == ["kind"]
    rules = [r["rule"] for r in choice["x-kubernetes-validations"]]
    assert rules == [
        "self.kind != 'a' || (has(self.text) && !has(self.extra))",
        "self.kind != 'b' || (has(self.text))",
        "self.kind != 'b' || (self.extra < 10)",
    ]


def test_union_variants_that_disagree_on_a_field_are_refused() -> None:
    class C(ApiModel):
        kind: Literal["c"]
        text: list[str]

    class Conflict(ApiModel):
        choice: Annotated[A | C, Field(discriminator="kind")]

    with pytest.raises(SchemaError, match=r"Conflict\.choice\.text: the variants of this union give text"):
        structural_schema(Conflict)


def test_plain_union_is_refused() -> None:
    class Bad(ApiModel):
        value: int | str

    with pytest.raises(SchemaError, match=r"Bad\.value: a union of 2 types"):
        structural_schema(Bad)
