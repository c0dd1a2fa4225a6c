"""Countdown: an arithmetic expression over the given numbers that equals the target.

As in TinyZero's countdown reward (Pan et al. 2025), but with exact rational arithmetic and a
safe parser. Task contract: `task.metadata["numbers"]` (list[int]) and `task.metadata["target"]` (int).

The expression is the last <answer>...</answer> if present, else the last \\boxed{...}, else the
last non-empty line. `\\times`, `\\cdot`, `×` read as `*`, `\\div`, `÷` as `/`, `$` is dropped,
and a trailing `= <number>` is ignored (the left side must equal the target).

Safety: never eval. The text must be at most MAX_CHARS of digits, + - * / ( ) and spaces; it is
then parsed with `ast` in eval mode and only integer constants, binary + - * /, unary minus and
parentheses are accepted (nesting at most MAX_DEPTH); anything else (names, calls, attributes,
powers, floats) is unparsable.

Rules: a number may be used at most as often as it is given (a multiset; unary minus does not make
a new number); `require_all=True` asks for every number exactly once, as TinyZero does. Division
is exact (fractions.Fraction: 6/4*4 = 6); division by zero is wrong.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from rewards.boxed import extract_boxed
from rl.wire import Task

MAX_CHARS = 200
MAX_DEPTH = 32
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
TRAILING_RESULT = re.compile(r"=\s*-?\d+\s*$")
ALLOWED_CHARS = re.compile(r"[\d\s+\-*/()]*")  # checked before ast.parse: no 0x10, 1_000, 1.5 or names
OPERATORS = {"\\times": "*", "\\cdot": "*", "×": "*", "\\div": "/", "÷": "/", "$": ""}
BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


class Unparsable(ValueError):
    pass


def extract_expression(completion: str) -> str | None:
    """The last <answer> contents, else the last \\boxed{} contents, else the last non-empty line."""
    matches = ANSWER_TAG.findall(completion)
    if matches:
        text = matches[-1]
    else:
        text = extract_boxed(completion)
        if text is None:
            lines = [line for line in completion.splitlines() if line.strip()]
            if not lines:
                return None
            text = lines[-1]
    for latex, op in OPERATORS.items():
        text = text.replace(latex, op)
    return TRAILING_RESULT.sub("", text).strip()


def parse_expression(text: str) -> ast.expr:
    """The expression's AST, or Unparsable if it is too long, not Python syntax or uses anything not allowed."""
    if len(text) > MAX_CHARS:
        raise Unparsable(f"longer than {MAX_CHARS} characters")
    if not ALLOWED_CHARS.fullmatch(text):
        raise Unparsable("only digits, + - * /, parentheses and spaces are allowed")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise Unparsable(str(err)) from err
    check_allowed(tree.body, depth=0)
    return tree.body


def check_allowed(node: ast.expr, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Unparsable(f"nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        check_allowed(node.left, depth + 1)
        check_allowed(node.right, depth + 1)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        check_allowed(node.operand, depth + 1)
    elif not (isinstance(node, ast.Constant) and type(node.value) is int):
        raise Unparsable(f"{ast.dump(node)[:60]} is not allowed")


def numbers_used(node: ast.expr) -> list[int]:
    """The integer literals of an allowed expression, left to right."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of an allowed expression; ZeroDivisionError on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand)
    return BINARY[type(node.op)](evaluate(node.left), evaluate(node.right))


def countdown(
    completion: str,
    task: Task,
    *,
    correct: float = 1.0,
    wrong: float = 0.0,
    unparsable: float = 0.0,
    require_all: bool = False,
    num_tokens: int | None = None,
) -> float:
    """`correct` if the expression uses only the given numbers and equals the target exactly."""
    if "numbers" not in task.metadata or "target" not in task.metadata:
        raise ValueError(f"task {task.task_id}: countdown needs metadata['numbers'] (list[int]) and metadata['target'] (int)")
    given, target = Counter(task.metadata["numbers"]), task.metadata["target"]
    text = extract_expression(completion)
    if not text:
        return unparsable
    try:
        tree = parse_expression(text)
    except Unparsable:
        return unparsable
    used = Counter(numbers_used(tree))
    if used - given or (require_all and used != given):
        return wrong
    try:
        value = evaluate(tree)
    except ZeroDivisionError:
        return wrong
    return correct if value == target else wrong
