"""multi's `calculate_output`: arithmetic over grader names, checked at compile time, never `eval()`d.

The language: numbers, grader names, `+ - * /`, unary minus, parentheses, and the functions min, max (one
or more arguments), abs, sqrt, exp (one) and log (one, or two with a base). The text is parsed with `ast`
and every node checked against that whitelist; an unknown name, another operator or a syntax error is a
GraderError naming the token. Grader names may contain `-` (they are DNS labels): a name is matched whole,
so `a-b` means the grader `a-b` when one exists; write `a - b` for a difference.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import NoReturn, cast

from finetune_trainer.graders.core import GraderError

BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {  # function, fewest, most arguments
    "min": (lambda *a: min(a), 1, None),
    "max": (lambda *a: max(a), 1, None),
    "abs": (abs, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 2),
}
OPERATOR_TEXT = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitXor: "^"}


class FormulaError(ArithmeticError):
    """The formula cannot be evaluated for these scores (division by zero, log of 0, overflow...)."""


class Formula:
    def __init__(self, text: str, names: Collection[str], field: str) -> None:
        self.text = text
        self.field = field
        self.aliases: dict[str, str] = {}  # the Python identifier standing for each grader name
        code = text
        for i, name in enumerate(sorted(names, key=len, reverse=True)):
            alias = f"_grader_{i}"
            self.aliases[alias] = name
            code = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])(?!\s*\()", alias, code)
        try:
            tree = ast.parse(code.strip(), mode="eval")
        except SyntaxError as err:
            line, at = (err.text or "").rstrip(), (err.offset or 0) - 1
            token = line[at:].split()[:1] if 0 <= at < len(line) else []
            near = f" near {self._unalias(token[0])!r}" if token else " at the end" if at >= len(line) else ""
            raise GraderError(f"{field}: cannot parse {text!r}{near}: {err.msg}") from err
        self.tree = tree.body
        self._check(self.tree)

    def evaluate(self, scores: Mapping[str, float]) -> float:
        try:
            value = self._eval(self.tree, scores)
        except ZeroDivisionError as err:
            raise FormulaError(f"division by zero in {self.text!r}") from err
        except (ValueError, OverflowError) as err:
            raise FormulaError(f"{err} in {self.text!r}") from err
        if not math.isfinite(value):
            raise FormulaError(f"{self.text!r} gave {value}")
        return value

    def _eval(self, node: ast.expr, scores: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(cast(float, node.value))
        if isinstance(node, ast.Name):
            return float(scores[self.aliases[node.id]])
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](self._eval(node.left, scores), self._eval(node.right, scores))
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](self._eval(node.operand, scores))
        assert isinstance(node, ast.Call)
        assert isinstance(node.func, ast.Name)
        return float(FUNCTIONS[node.func.id][0](*(self._eval(arg, scores) for arg in node.args)))

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                self._refuse(node, "is not a number")
        elif isinstance(node, ast.Name):
            if node.id not in self.aliases:
                known = ", ".join(sorted(self.aliases.values()))
                self._refuse(node, f"is not a grader name (graders: {known})")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY:
                op = OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)
                raise GraderError(f"{self.field}: operator {op!r} is not allowed; use + - * /")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            self._check(node.operand)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            self._check_call(node, node.func.id)
        else:
            self._refuse(
                node,
                "is not allowed (numbers, grader names, + - * /, parentheses and "
                f"{', '.join(FUNCTIONS)} only)",
            )

    def _check_call(self, node: ast.Call, function: str) -> None:
        if function not in FUNCTIONS:
            self._refuse(node.func, f"is not a function (functions: {', '.join(FUNCTIONS)})")
        _, fewest, most = FUNCTIONS[function]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            wanted = (
                f"{fewest}" if most == fewest else f"{fewest} or more" if most is None else f"1 to {most}"
            )
            raise GraderError(f"{self.field}: {function}() takes {wanted} arguments, got {len(node.args)}")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self._refuse(arg, "is not allowed")
            self._check(arg)

    def _refuse(self, node: ast.AST, why: str) -> NoReturn:
        raise GraderError(f"{self.field}: {self._unalias(ast.unparse(node))!r} {why}")

    def _unalias(self, code: str) -> str:
        return re.sub(r"_grader_\d+", lambda m: self.aliases.get(m.group(0), m.group(0)), code)
