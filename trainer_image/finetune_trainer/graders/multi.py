"""multi: several named graders scored on the same batch, combined per sample by `weights` (a weighted
mean, weights normalised by their sum) or by the `calculate_output` formula (`formula.py`).

Every sub-grader grades the whole batch once. `details` holds each sub-grader's score by name. When any
sub-grader could not grade a sample, the sample is an error naming that sub-grader (score 0); a formula
that fails for one sample's scores (division by zero...) is an error for that sample only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from finetune_api.v1alpha1.graders import MultiGrader
from finetune_trainer.graders.core import BaseGrader, GraderError, Result, where
from finetune_trainer.graders.formula import Formula, FormulaError

CompileSimple = Callable[[Any], BaseGrader]


class Multi(BaseGrader):
    def __init__(self, spec: MultiGrader, compile_simple: CompileSimple) -> None:
        self.name = spec.name
        self.weights: dict[str, float] | None = None
        self.formula: Formula | None = None
        if (spec.weights is None) == (spec.calculate_output is None):
            raise GraderError(
                f"{where(spec.name, 'weights')}: set exactly one of weights or calculate_output"
            )
        if spec.weights is not None:
            if set(spec.weights) != set(spec.graders):
                missing = sorted(set(spec.graders) - set(spec.weights))
                extra = sorted(set(spec.weights) - set(spec.graders))
                raise GraderError(
                    f"{where(spec.name, 'weights')}: must name exactly the graders in graders "
                    f"(missing: {missing or 'none'}, not a grader: {extra or 'none'})"
                )
            if not math.fsum(spec.weights.values()) > 0:
                raise GraderError(f"{where(spec.name, 'weights')}: at least one weight must be above 0")
            self.weights = dict(spec.weights)
        else:
            assert spec.calculate_output is not None
            self.formula = Formula(spec.calculate_output, spec.graders, where(spec.name, "calculate_output"))
        self.graders: dict[str, BaseGrader] = {}
        try:
            for key, sub in spec.graders.items():
                try:
                    self.graders[key] = compile_simple(sub)
                except GraderError as err:
                    raise GraderError(f"{where(spec.name, f'graders.{key}')}: {err}") from err
        except BaseException:
            self.close()
            raise

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        graded = {key: grader.grade(samples, items) for key, grader in self.graders.items()}
        return [
            self._combine({key: results[i] for key, results in graded.items()}) for i in range(len(samples))
        ]

    def _combine(self, results: Mapping[str, Result]) -> Result:
        details = {key: r.score for key, r in results.items() if r.error is None}
        errors = [f"grader {key!r}: {r.error}" for key, r in results.items() if r.error is not None]
        if errors:
            return Result(score=0.0, passed=None, error="; ".join(errors), details=details)
        if self.weights is not None:
            total = math.fsum(self.weights.values())
            score = math.fsum(self.weights[key] * details[key] for key in details) / total
            return Result(score=score, passed=None, details=details)
        assert self.formula is not None
        try:
            return Result(score=self.formula.evaluate(details), passed=None, details=details)
        except FormulaError as err:
            return Result(score=0.0, passed=None, error=f"calculate_output: {err}", details=details)

    def close(self) -> None:
        for grader in self.graders.values():
            grader.close()
