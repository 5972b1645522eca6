"""Graders in OpenAI's shapes, shared by RFT rewards and the EvalGate: `compile_grader(spec)` once, then
`grade(samples, items)` per batch.

    with compile_grader(spec, scratch=workdir) as grader:
        results = grader.grade([sample_from_text(reply) for reply in replies], rows)

`samples[i]` is the sample namespace of templates (`output_text`, `output_json`: see `sample_from_text`),
`items[i]` the dataset row it answers. Configuration problems raise GraderError when compiling; a sample
that cannot be graded never raises, it gets `Result.error` and score 0. Modules: `templates` (placeholders),
`text` (string_check, text_similarity), `embedding` (cosine's MiniLM), `model` (score_model), `python` with
`sandbox`, `sandbox_worker` and `confine` (python graders), `multi` with `formula`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from finetune_api.v1alpha1.graders import (
    Grader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from finetune_trainer.graders.core import BaseGrader, GraderError, Result
from finetune_trainer.graders.templates import sample_from_text

__all__ = ["Compiled", "GraderError", "Result", "compile_grader", "sample_from_text"]


class Compiled(Protocol):
    name: str

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        """One Result per sample, in order; `items[i]` is the dataset row of `samples[i]`."""
        ...

    def close(self) -> None:
        """Free models and worker processes; the grader is unusable afterwards."""
        ...

    def __enter__(self) -> Compiled: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def compile_grader(spec: Grader, *, scratch: Path | None = None) -> Compiled:
    """A ready grader for `spec` (any member of finetune_api's `Grader` union). Models load here; python
    graders' workers get their temp dirs under `scratch` (the system temp dir when None)."""
    if isinstance(spec, MultiGrader):
        from finetune_trainer.graders.multi import Multi  # noqa: PLC0415 (each kind imports its own)

        return Multi(spec, lambda sub: _simple(sub, scratch))
    return _simple(spec, scratch)


def _simple(spec: Any, scratch: Path | None) -> BaseGrader:
    if isinstance(spec, StringCheckGrader):
        from finetune_trainer.graders.text import StringCheck  # noqa: PLC0415

        return StringCheck(spec)
    if isinstance(spec, TextSimilarityGrader):
        from finetune_trainer.graders.text import TextSimilarity  # noqa: PLC0415

        return TextSimilarity(spec)
    if isinstance(spec, ScoreModelGrader):
        from finetune_trainer.graders.model import ScoreModel  # noqa: PLC0415

        return ScoreModel(spec)
    if isinstance(spec, PythonGrader):
        from finetune_trainer.graders.python import PythonCode  # noqa: PLC0415

        return PythonCode(spec, scratch)
    raise GraderError(
        f"not a grader spec: {type(spec).__name__} (expected one of finetune_api's Grader types)"
    )
