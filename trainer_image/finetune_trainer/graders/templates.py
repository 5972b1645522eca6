"""`{{sample.output_text}}` / `{{item.a.b}}` templates: compiled once, rendered per sample.

A placeholder names a namespace (`sample` or `item`) and a dotted path into it; a numeric segment indexes
a list (`{{item.choices.0}}`). Strings render as they are, anything else as JSON. A namespace other than
sample/item is a GraderError when the template is compiled; a field missing from one sample or item is a
`MissingFieldError` for that sample only (the graders turn it into `Result.error`). Text that merely contains
braces without forming a `{{ path }}` placeholder stays literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_trainer.graders.core import GraderError

NAMESPACES = ("sample", "item")
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[^.\s{}]+)*")


class MissingFieldError(LookupError):
    """A template's field is absent from this sample or item; the message names it."""


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[str | tuple[str, ...], ...]  # literal text, or a path (namespace first)

    def render(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> str:
        scopes = {"sample": sample, "item": item}
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = lookup(scopes[part[0]], part)
                out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return "".join(out)


def compile_template(text: str, field: str) -> Template:
    """`field` is the GraderError prefix naming where the template sits (e.g. "grader 'g': input")."""
    parts: list[str | tuple[str, ...]] = []
    end = 0
    for match in PLACEHOLDER.finditer(text):
        path = match.group(1)
        if not PATH.fullmatch(path):
            raise GraderError(
                f"{field}: {match.group(0)!r} is not a field reference; write {{{{sample.output_text}}}} "
                "or {{item.<field>}}"
            )
        segments = tuple(path.split("."))
        if segments[0] not in NAMESPACES:
            raise GraderError(
                f"{field}: {match.group(0)!r} names {segments[0]!r}; templates refer to sample.* "
                "(the model's output) or item.* (the dataset row)"
            )
        parts.extend([text[end : match.start()], segments])
        end = match.end()
    parts.append(text[end:])
    return Template(text, tuple(p for p in parts if p != ""))


def lookup(root: Any, path: Sequence[str]) -> Any:
    value = root
    for depth, segment in enumerate(path[1:], start=1):
        here = ".".join(path[:depth])
        if value is None:
            raise MissingFieldError(f"{{{{{'.'.join(path)}}}}}: {here} is null")
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise MissingFieldError(f"{{{{{'.'.join(path)}}}}}: {here} has no field {segment!r}")
    return value


def sample_from_text(text: str) -> dict[str, Any]:
    """The sample namespace for a model's reply: its text, and the text parsed as JSON (None when the
    reply is not a JSON document)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return {"output_text": text, "output_json": parsed}
