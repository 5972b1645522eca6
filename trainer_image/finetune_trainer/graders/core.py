"""What every grader shares: the per-sample `Result`, the compile-time `GraderError`, and `BaseGrader`
(the context-manager half of `Compiled`). Graders never raise for one bad sample: they return a Result with
`error` set and score 0; only configuration problems raise, and they name the field at fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


class GraderError(ValueError):
    """A grader's configuration cannot work (bad template, syntax error, unknown model...).

    The message starts with the grader's name and the field at fault, e.g.
    `grader 'accuracy': calculate_output: unknown name 'acc'`."""


@dataclass(frozen=True)
class Result:
    score: float  # the reward; 0.0 when the sample could not be graded
    passed: bool | None  # score >= pass_threshold when the grader has one, else None
    error: str | None = None  # why the sample could not be graded
    details: dict[str, float] = field(default_factory=dict)  # sub-grader scores for multi, by name


def scored(score: float, threshold: float | None) -> Result:
    return Result(score=score, passed=None if threshold is None else score >= threshold)


def failed(error: str, threshold: float | None) -> Result:
    """An ungraded sample: score 0, and it never passes."""
    return Result(score=0.0, passed=None if threshold is None else False, error=error)


def check_batch(samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> None:
    if len(samples) != len(items):
        raise ValueError(f"grade() needs one item per sample: got {len(samples)} samples, {len(items)} items")


def where(name: str, path: str) -> str:
    """The prefix of a GraderError message: the grader and the field."""
    return f"grader {name!r}: {path}"


class BaseGrader:
    """Context-manager plumbing for compiled graders; subclasses own `grade` and whatever `close` frees."""

    name: str

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self) -> BaseGrader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
