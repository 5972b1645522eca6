"""OpenAI fine-tuning JSONL, accepted as-is, read into rows with every problem named by file, line and field.

One reader for every format of `DatasetFormat`; `auto` is decided by the first valid JSON object. A row
with a problem is left out and reported; the caller decides whether any problem fails the data (it does:
a training file with malformed rows is refused, as OpenAI refuses it). At most `MAX_PROBLEMS` problems are
kept, with the total counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from finetune_api.v1alpha1.common import DatasetFormat

MAX_PROBLEMS = 50
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
SHARED_PROMPTS = ("system: ", "developer: ")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass(frozen=True)
class Row:
    line: int
    data: dict[str, Any]
    text: str  # every text the model sees or learns: the PII scan reads it
    images: tuple[str, ...] = ()
    synthetic: bool = False
    adversarial: bool = False
    # what makes the row itself, for duplicate and leakage checks: the turns' contents without role labels
    # and without system/developer prompts, which datasets share across rows
    own_text: str | None = None

    @property
    def similarity_text(self) -> str:
        return self.text if self.own_text is None else self.own_text


@dataclass
class Dataset:
    name: str  # the file, as problems name it
    format: DatasetFormat
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, line: int, where: str, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.name, line, where, message))


class RowError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def detect(data: dict[str, Any]) -> DatasetFormat:
    """The format a row's keys say it has (`auto`)."""
    if "preferred_output" in data or "non_preferred_output" in data:
        return DatasetFormat.PREFERENCE
    if "prompt" in data and "completion" in data:
        return DatasetFormat.PROMPT_COMPLETION
    if "image" in data and "label" in data:
        return DatasetFormat.IMAGE_LABEL
    if "messages" in data:
        messages = data["messages"] if isinstance(data["messages"], list) else []
        if any(_has_image(m) for m in messages if isinstance(m, dict)):
            return DatasetFormat.VISION_CHAT
        extra = set(data) - {"messages", "tools", "parallel_tool_calls", "metadata"}
        if extra or not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            return DatasetFormat.RFT  # reference fields for a grader, or prompts without answers
        return DatasetFormat.CHAT
    raise RowError("", f"cannot tell the format from keys {sorted(data)[:6]}")


def read_jsonl(name: str, content: bytes, fmt: DatasetFormat = DatasetFormat.AUTO) -> Dataset:
    dataset = Dataset(name, fmt)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        dataset.problem(0, "", f"not UTF-8 (byte {err.start})")
        return dataset
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            dataset.problem(number, "", f"invalid JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(data, dict):
            dataset.problem(number, "", f"expected a JSON object, got {type(data).__name__}")
            continue
        try:
            if dataset.format == DatasetFormat.AUTO:
                dataset.format = detect(data)
            dataset.rows.append(parse(dataset.format, number, data))
        except RowError as err:
            dataset.problem(number, err.where, str(err))
    if not dataset.rows and not dataset.problem_count:
        dataset.problem(0, "", "no rows")
    return dataset


def parse(fmt: DatasetFormat, line: int, data: dict[str, Any]) -> Row:
    meta = data.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    flags: dict[str, Any] = {
        "synthetic": bool(meta.get("synthetic")),
        "adversarial": bool(meta.get("adversarial")),
    }
    if fmt in (DatasetFormat.CHAT, DatasetFormat.VISION_CHAT, DatasetFormat.RFT):
        texts, images = _messages(data.get("messages"), "messages", need_assistant=fmt != DatasetFormat.RFT)
        if fmt == DatasetFormat.VISION_CHAT and not images:
            raise RowError("messages", "a vision_chat row needs at least one image_url content part")
        own = [*_contents(texts), *map(image_identity, images)]
        if fmt == DatasetFormat.RFT:
            fields = [
                f"{k}={json.dumps(v)}" for k, v in sorted(data.items()) if k not in ("messages", "metadata")
            ]
            texts += fields
            own += fields
        return Row(line, data, "\n".join(texts), tuple(images), **flags, own_text="\n".join(own))
    if fmt == DatasetFormat.PROMPT_COMPLETION:
        prompt, completion = _string(data, "prompt", empty=True), _string(data, "completion")
        return Row(line, data, f"{prompt}\n{completion}", **flags)
    if fmt == DatasetFormat.PREFERENCE:
        source = data.get("input")
        if not isinstance(source, dict):
            raise RowError("input", "expected an object with messages")
        texts, _ = _messages(source.get("messages"), "input.messages", need_assistant=False)
        chosen, _ = _messages(data.get("preferred_output"), "preferred_output", need_assistant=True)
        rejected, _ = _messages(data.get("non_preferred_output"), "non_preferred_output", need_assistant=True)
        outputs = ["<chosen>", *chosen, "<rejected>", *rejected]
        own = [*_contents(texts), "<chosen>", *_contents(chosen), "<rejected>", *_contents(rejected)]
        return Row(line, data, "\n".join(texts + outputs), **flags, own_text="\n".join(own))
    if fmt == DatasetFormat.IMAGE_LABEL:
        image, label = _string(data, "image"), _string(data, "label")
        _image_uri(image, "image")
        return Row(line, data, label, (image,), **flags, own_text=f"{image_identity(image)}\n{label}")
    raise RowError("", f"unknown format {fmt}")


def image_identity(uri: str) -> str:
    """What tells images apart for the duplicate and leakage gates: the URI, or for an inline image a
    digest of its data (never the base64 itself, which the PII patterns would read as text)."""
    if uri.startswith("data:"):
        return "image:sha256:" + hashlib.sha256(uri.encode()).hexdigest()[:32]
    return f"image:{uri}"


def _contents(texts: list[str]) -> list[str]:
    """The turns' contents without their role labels, shared prompts (system, developer) left out: what
    tells a row from the others for the duplicate and leakage gates."""
    return [t.partition(": ")[2] for t in texts if not t.startswith(SHARED_PROMPTS)]


def preference_parts(row: Row) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a preference row."""
    prompt, _, rest = row.text.partition("\n<chosen>\n")
    chosen, _, rejected = rest.partition("\n<rejected>\n")
    return prompt, chosen, rejected


def _string(data: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RowError(key, "missing" if value is None else f"expected a string, got {type(value).__name__}")
    if not empty and not value.strip():
        raise RowError(key, "empty")
    return value


def _messages(value: Any, where: str, *, need_assistant: bool) -> tuple[list[str], list[str]]:
    if not isinstance(value, list) or not value:
        raise RowError(where, "expected a non-empty list of messages")
    texts: list[str] = []
    images: list[str] = []
    for i, message in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise RowError(at, "expected an object")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"{at}.role", f"{role!r} is not one of {sorted(ROLES)}")
        weight = message.get("weight")
        if weight is not None and weight not in (0, 1):
            raise RowError(f"{at}.weight", "must be 0 or 1")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue
        if isinstance(content, str):
            texts.append(f"{role}: {content}")
        elif isinstance(content, list):
            texts.append(f"{role}: " + " ".join(_parts(content, f"{at}.content", images)))
        else:
            raise RowError(f"{at}.content", "expected a string or a list of content parts")
    if need_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in value):
        raise RowError(where, "no assistant message to learn from")
    return texts, images


def _parts(parts: Iterable[Any], where: str, images: list[str]) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise RowError(f"{at}.image_url.url", "missing")
            images.append(_image_uri(url, f"{at}.image_url.url"))
        else:
            raise RowError(at, "expected {type: text, text} or {type: image_url, image_url: {url}}")
    return texts


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content
    )


def _image_uri(uri: str, where: str) -> str:
    if uri.startswith("data:image/") and ";base64," in uri:
        return uri
    if uri.startswith(("s3://", "https://", "http://", "file://", "/")):
        return uri
    raise RowError(where, "expected a data:image/...;base64 URL or an s3://, https:// or file URI")
