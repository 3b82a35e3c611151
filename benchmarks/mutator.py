"""The mutator of benchmarks.mutation: one AST change at a time in a named function (a comparison flipped,
`and`/`or` swapped, an arithmetic operator swapped, a number moved by one, `max`/`min` swapped, a condition
negated), and the source text with it applied."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass
class Mutant:
    module: str
    function: str
    line: int
    kind: str
    before: str
    after: str
    status: str = "pending"  # killed | survived | timeout | error
    seconds: float = 0.0

    first_status: str | None = None  # the status of the first run, when a rerun after triage changed it
    context: str = ""  # the source line, stripped: tells apart equal changes in one function

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.kind}"

    @property
    def identity(self) -> str:
        """What names the mutant across edits that move its line: EQUIVALENT's key."""
        return f"{self.module}:{self.function}:{self.kind}:{self.before} | {self.context}"


_COMPARE_FLIPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
}


def _variants(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(kind, replacement node) for every mutation of `node` itself."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE_FLIPS:
        flipped = _COMPARE_FLIPS[type(node.ops[0])]()
        yield (
            f"compare {type(node.ops[0]).__name__}->{type(flipped).__name__}",
            ast.Compare(node.left, [flipped], node.comparators),
        )
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"boolop {type(node.op).__name__}->{type(other).__name__}", ast.BoolOp(other, node.values)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
        swapped = _BINOP_SWAPS[type(node.op)]()
        yield (
            f"binop {type(node.op).__name__}->{type(swapped).__name__}",
            ast.BinOp(node.left, swapped, node.right),
        )
    elif (
        isinstance(node, ast.Constant)
        and type(node.value) in (int, float)
        and not isinstance(node.value, bool)
    ):
        value = node.value
        moved = 1 if value == 0 else (value + 1 if isinstance(value, int) else value * 2)
        yield f"number {value!r}->{moved!r}", ast.Constant(moved)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
        other = "min" if node.func.id == "max" else "max"
        yield f"call {node.func.id}->{other}", ast.Call(ast.Name(other, ast.Load()), node.args, node.keywords)
    elif isinstance(node, ast.If | ast.While):
        yield "negate condition", ast.UnaryOp(ast.Not(), node.test)


def find_mutants(module: str, functions: Sequence[str], source: str) -> list[tuple[Mutant, ast.AST, ast.AST]]:
    """Every mutation site in the named functions: (mutant, the node replaced, its replacement)."""
    tree = ast.parse(source)
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or function.name not in functions:
            continue
        body = function.body[1:] if ast.get_docstring(function) else function.body
        # Positions inside f-strings are not reliable before Python 3.12: their parts are left alone.
        in_fstrings = {id(inner) for outer in ast.walk(function) if isinstance(outer, ast.JoinedStr)
                       for inner in ast.walk(outer)}  # fmt: skip
        for statement in body:
            for node in ast.walk(statement):
                if id(node) in in_fstrings:
                    continue
                for kind, replacement in _variants(node):
                    target = node.test if isinstance(node, ast.If | ast.While) else node
                    if getattr(target, "lineno", None) is None:
                        continue
                    mutant = Mutant(
                        module,
                        function.name,
                        target.lineno,
                        kind,
                        ast.get_source_segment(source, target) or "",
                        ast.unparse(replacement),
                        context=source.splitlines()[target.lineno - 1].strip(),
                    )
                    found.append((mutant, target, replacement))
    return found


def mutated_source(source: str, target: ast.AST, replacement: ast.AST) -> str:
    """`source` with `target`'s text replaced by the replacement, parenthesised (line breaks and comments
    elsewhere kept)."""
    lines = source.splitlines(keepends=True)
    start, end = target.lineno - 1, target.end_lineno - 1
    first, last = lines[start], lines[end]
    prefix = first.encode()[: target.col_offset].decode()
    suffix = last.encode()[target.end_col_offset :].decode()
    text = f"({ast.unparse(replacement)})"
    return "".join(lines[:start]) + prefix + text + suffix + "".join(lines[end + 1 :])
