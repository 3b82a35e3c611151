"""The one bounded loader of YAML and JSON documents (profiles, connections, `pruned.json`, pool rows, stored
measurements): a size limit, a nesting-depth limit and a limit on the nodes an alias-laden YAML document expands
to (a 1 KB alias bomb is refused before anything is expanded), duplicate mapping keys refused, and non-finite
numbers (.nan, .inf, NaN, Infinity) refused. Every failure is one DocumentError that never quotes the document."""

from __future__ import annotations

import json
import math
import re
import reprlib
from typing import Any

import yaml

from edge_smsp.core.errors import EdgeSmspError

MAX_BYTES = 256 << 10  # a profile or a connection: a few hundred bytes in practice
MAX_JSON_BYTES = 64 << 20  # pruned.json of a large backbone, a pool row
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_NODES = 200_000  # scalars, lists and mappings after expanding YAML aliases


class DocumentError(EdgeSmspError):
    """A YAML or JSON document that is malformed or beyond the loader's limits (the message says which)."""


def shown(value: Any, limit: int = 80) -> str:
    """repr() of a value for an error message, bounded whatever its size (never a whole expanded document)."""
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother, bounded.maxlist, bounded.maxdict = (
        3,
        limit,
        limit,
        6,
        6,
    )
    text = bounded.repr(value)
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit + 20 else text[: limit + 19] + "…"


def load_yaml(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A YAML document (safe tags only) within the limits; DocumentError otherwise."""
    _check_size(text, max_bytes)
    loader = None
    try:
        loader = _BoundedLoader(text, max_depth)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node)
        document = loader.construct_document(node)
    except yaml.YAMLError as error:
        raise DocumentError(_yaml_problem(error)) from None
    except RecursionError:
        raise DocumentError(f"nested more than {max_depth} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()
    _check_finite(document)
    return document


def load_json(text: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON document within the limits, without duplicate keys or NaN/Infinity; DocumentError otherwise."""
    _check_size(text, max_bytes)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise DocumentError("not UTF-8 text") from None
    _check_json_depth(text, max_depth)
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise DocumentError(
            f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except RecursionError:
        raise DocumentError(f"nested more than {max_depth} levels deep") from None
    _check_finite(document)  # 1e999 parses as inf
    return document


def finite_number(value: Any, what: str, *, minimum: float = -math.inf, maximum: float = math.inf) -> float:
    """`value` as a finite float in [minimum, maximum]; DocumentError naming `what` otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DocumentError(f"{what}: must be a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise DocumentError(
            f"{what}: must be a finite number from {minimum:g} to {maximum:g}, got {shown(value)}"
        )
    return number


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at `max_depth` (PyYAML composes recursively: 10,000 '[' would overflow
    the stack) and refuses duplicate keys."""

    def __init__(self, stream: str | bytes, max_depth: int) -> None:
        super().__init__(stream)
        self._depth = 0
        self._max_depth = max_depth

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (PyYAML's name)
        # '[' and '{' counted as they are scanned: 100,000 of them would take the scanner minutes.
        if self.flow_level >= self._max_depth:
            raise DocumentError(f"nested more than {self._max_depth} levels deep")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                raise DocumentError(f"nested more than {self._max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_tree(root: yaml.Node) -> None:
    """Nodes after alias expansion counted without expanding (each node's size once), duplicate keys found."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in visiting:
                raise DocumentError("holds a recursive YAML alias (a value that contains itself)")
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        size = 1 + sum(sizes.get(id(child), 0) for child in children)
        if size > MAX_NODES:
            raise DocumentError(
                f"expands to more than {MAX_NODES:,} values (YAML aliases repeated too often: an alias bomb?)"
            )
        sizes[id(node)] = size
        visiting.discard(id(node))
        _check_number_spelling(node)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in seen:
                        line = key.start_mark.line + 1 if key.start_mark else "?"
                        raise DocumentError(f"duplicate key {shown(key.value)} at line {line}")
                    seen.add((key.tag, key.value))


# YAML 1.1 reads 010 as 8 (octal), 0b10 as 2 and 1:30 as 90 (base 60): a profile saying `threads: 010` would run
# with 8 threads without a word. Such spellings of an unquoted integer are refused.
_SURPRISING_INT = re.compile(r"[-+]?(0[0-7_]+|0b[01_]+|[1-9][0-9_]*(:[0-5]?[0-9])+)")


def _check_number_spelling(node: yaml.Node) -> None:
    plain_int = isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int") and node.style is None
    if plain_int and _SURPRISING_INT.fullmatch(node.value):
        line = node.start_mark.line + 1 if node.start_mark else "?"
        raise DocumentError(
            f"{shown(node.value)} at line {line} is an octal, binary or base-60 number in YAML 1.1; write it "
            "in plain decimal (no leading 0), or quote it if it is text"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_size(text: str | bytes, max_bytes: int) -> None:
    if len(text) > max_bytes:
        raise DocumentError(f"{len(text):,} bytes, more than the {max_bytes:,} a document may have")


def _check_json_depth(text: str, max_depth: int) -> None:
    """Nesting depth counted on the text (brackets outside strings), before the recursive parser sees it."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise DocumentError(f"nested more than {max_depth} levels deep")
        elif char in "]}":
            depth -= 1


def _check_finite(document: Any) -> None:
    """DocumentError naming the first non-finite number's place (`latency_target_ms`, `a.b[2]`)."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            place = f"{where}: " if where else ""
            raise DocumentError(f"{place}holds a non-finite number ({value}); numbers must be finite")
        if isinstance(value, dict):
            stack.extend((item, f"{where}.{key}" if where else str(key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise DocumentError(f"duplicate key {shown(key)}")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise DocumentError(f"holds {name}; numbers must be finite")


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"malformed YAML: {problem}"
    return f"malformed YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
