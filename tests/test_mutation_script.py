"""benchmarks/mutation.py's mutator (its runs are a benchmark, not CI): every mutant is valid Python that
differs from the source in exactly the named place, and every target function exists."""

from __future__ import annotations

import ast

from benchmarks import mutation

SOURCE = '''
def fit(points, floor=4):
    """A docstring with 3 numbers: 1, 2."""
    if len(points) >= 2 and floor > 0:
        slope = sum(points) / len(points)
        return max(floor, slope * 2)
    return f"{floor + 1} points"


def untouched(x):
    return x < 1
'''


def test_mutants_are_valid_python_changed_only_where_named() -> None:
    found = mutation.find_mutants("m.py", ("fit",), SOURCE)
    kinds = sorted({mutant.kind for mutant, _, _ in found})
    assert "compare GtE->Gt" in kinds and "boolop And->Or" in kinds and "call max->min" in kinds
    assert "binop Div->Mult" in kinds and "number 2->3" in kinds and "negate condition" in kinds
    assert all(mutant.function == "fit" for mutant, _, _ in found)  # `untouched` and f-strings are left alone
    assert not any("->" in mutant.kind and mutant.before == "1" for mutant, _, _ in found)
    for mutant, target, replacement in found:
        changed = mutation.mutated_source(SOURCE, target, replacement)
        ast.parse(changed)
        assert changed != SOURCE and mutant.line == target.lineno
        assert changed.splitlines()[: mutant.line - 1] == SOURCE.splitlines()[: mutant.line - 1]


def test_every_target_function_exists_and_yields_mutants() -> None:
    for module, (functions, tests) in mutation.TARGETS.items():
        source = (mutation.ROOT / module).read_text()
        defined = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
        assert set(functions) <= defined, module
        assert mutation.find_mutants(module, functions, source), module
        assert tests


def test_the_section_reports_the_score_over_non_equivalent_mutants() -> None:
    mutants = [
        mutation.Mutant("a.py", "f", 3, "compare Lt->LtE", "x < 1", "x <= 1", status="killed"),
        mutation.Mutant("a.py", "f", 4, "number 2->3", "2", "3", status="equivalent"),
        mutation.Mutant("b.py", "g", 5, "call max->min", "max(a, b)", "min(a, b)", status="survived"),
    ]
    payload = mutation.summary(mutants, {"a.py": 1.0, "b.py": 1.0}, 60.0)
    assert payload["totals"] == {"mutants": 3, "killed": 1, "survived": 1, "equivalent": 1, "score": 0.5}
    text = mutation.section(payload)
    assert "50 % of the non-equivalent mutants killed" in text and "**survived**" in text
    assert text.startswith(mutation.SECTION_START) and text.endswith(mutation.SECTION_END)
