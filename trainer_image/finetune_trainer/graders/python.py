"""python graders: user code defining `grade(sample, item) -> float` (or int or bool), run in the sandbox.

The source is checked in the parent when the grader is compiled: a syntax error, no top-level `grade`, an
async `grade` or one that cannot take (sample, item) is a GraderError naming `source`. Running it is
`sandbox.py`'s job: one worker per batch, per-sample wall-time limit, memory and CPU limits, no network,
no processes, no writes outside the worker's temp dir. What one sample's code does (raise, return a
string, run out of time or memory) is that sample's `Result.error`; the other samples are still graded.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune_api.v1alpha1.graders import PythonGrader
from finetune_trainer.graders.core import BaseGrader, GraderError, Result, check_batch, failed, scored, where
from finetune_trainer.graders.sandbox import Limits, Sandbox


class PythonCode(BaseGrader):
    def __init__(self, spec: PythonGrader, scratch: Path | None = None) -> None:
        self.name = spec.name
        self.threshold = spec.pass_threshold
        check_source(spec.source, where(spec.name, "source"))
        self.sandbox = Sandbox(spec.source, Limits(spec.timeout_seconds, spec.memory_mib), scratch)

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        check_batch(samples, items)
        outcomes = self.sandbox.run(list(zip(samples, items, strict=True)))
        return [
            scored(o.score, self.threshold) if o.score is not None else failed(str(o.error), self.threshold)
            for o in outcomes
        ]


def check_source(source: str, field: str) -> None:
    try:
        compile(source, "<grader>", "exec")
    except (SyntaxError, ValueError) as err:
        line = f" at line {err.lineno}" if isinstance(err, SyntaxError) and err.lineno else ""
        message = err.msg if isinstance(err, SyntaxError) else str(err)
        raise GraderError(f"{field}: syntax error{line}: {message}") from err
    bindings = list(_bindings(ast.parse(source).body))
    if not bindings:
        raise GraderError(f"{field}: defines no top-level function grade(sample, item)")
    last = bindings[-1]
    if isinstance(last, ast.AsyncFunctionDef):
        raise GraderError(f"{field}: grade (line {last.lineno}) must be a plain function, not async")
    if isinstance(last, ast.FunctionDef):
        args = last.args
        positional = len(args.posonlyargs) + len(args.args)
        required = positional - len(args.defaults)
        kw_required = sum(d is None for d in args.kw_defaults)
        if required > 2 or kw_required or (positional < 2 and args.vararg is None):
            raise GraderError(
                f"{field}: grade (line {last.lineno}) must accept two arguments, grade(sample, item)"
            )


def _bindings(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Top-level statements that bind the name `grade` (looking into if/try/with/loops, not into
    functions or classes)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == "grade":
                yield node
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            if any((alias.asname or alias.name) == "grade" for alias in node.names):
                yield node
            continue
        targets = [n for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        if any(t.id == "grade" for t in targets) and not hasattr(node, "body"):
            yield node
        for block in ("body", "orelse", "finalbody"):
            yield from _bindings(getattr(node, block, []))
        for handler in getattr(node, "handlers", []):
            yield from _bindings(handler.body)
