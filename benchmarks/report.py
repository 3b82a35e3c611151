"""Write benchmarks/RESULTS.md (tables, verdicts, PNG plots) from the machine-readable results/*.json.

    python -m benchmarks.report [--mode full|quick]

For each benchmark the full-mode result is used when it exists, else the quick one (the section says which).
Each benchmark module writes its own section (benchmarks.registry); this module adds the verdicts and the
machine they ran on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import accuracy, adapt_time, budgets, evidence, heldout, mechanism, mutation
from benchmarks.common import BENCHMARKS_DIR, DEFAULT_RESULTS_DIR, read_json, result_path
from benchmarks.formatting import table
from benchmarks.registry import BENCHMARKS, run_order


def load_results(results_dir: Path, mode: str | None) -> dict[str, dict[str, Any]]:
    """name -> payload, preferring full over quick unless a mode is forced."""
    found = {}
    for name in [module.NAME for module in BENCHMARKS] + [heldout.NAME]:
        for candidate in [mode] if mode else ["full", "quick"]:
            payload = read_json(result_path(results_dir, name, candidate))
            if payload:
                found[name] = payload
                break
    return found


def machine_section(found: dict[str, dict[str, Any]]) -> str:
    """CPU, cores, versions, dates, commands."""
    any_payload = found.get(accuracy.NAME) or next(iter(found.values()))
    machine = any_payload["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    in_run_order = [(module.NAME, found[module.NAME]) for module in run_order() if module.NAME in found]
    commands = "\n".join(f"    {payload['command']}" for _, payload in in_run_order)
    dates = ", ".join(
        f"{name}: {payload['machine']['date']} (load {payload['machine'].get('load_average')})"
        for name, payload in in_run_order
    )
    return "\n\n".join(
        [
            "## Machine and how to reproduce",
            f"CPU: {machine['cpu']}, {machine['cores_usable']} usable cores, {machine['memory_gib']} GiB RAM, "
            f"{machine['os']}, Python {machine['python']}; {versions}; commit {machine.get('git_commit')}.",
            "The cores were shared with other users' jobs while these ran (load averages below), so absolute times are "
            "pessimistic and somewhat noisy; comparisons within a table ran under the same conditions. Training runs "
            "use one thread per process (`torch.set_num_threads(1)`): with two threads, PyTorch slowed down 5-15x "
            "whenever another process took a core.",
            f"Dates and load averages: {dates}.",
            "Commands (each resumable: rerun to continue; `python -m benchmarks.all --full` runs them all):\n\n"
            + commands
            + "\n    .venv/bin/python -m benchmarks.report",
        ]
    )


def render(found: dict[str, dict[str, Any]], plots: Path) -> str:
    """The whole RESULTS.md."""
    plots.mkdir(parents=True, exist_ok=True)
    accuracy_payload = found.get(accuracy.NAME)
    mechanism_payload = found.get(mechanism.NAME)
    v1, t1 = mechanism.claim(mechanism_payload)
    v2s, t2s, v2o, t2o = accuracy.claims(accuracy_payload)
    v3, t3 = budgets.claim(found.get(budgets.NAME))
    parts = ["# Benchmark results: do the SMSP paper's claims hold here?"]
    if heldout_text := heldout.section(found.get(heldout.NAME), plots):
        parts.append(heldout_text)
    heldout_claims = heldout.claims(found.get(heldout.NAME))
    if accuracy_payload and heldout_claims:
        parts += [
            "## The paper's configuration (the first study, 6 tasks)",
            "SMSP as the paper describes it (K summed pool masks, the backbone's weights, no recovery recipe) "
            "against the same baselines, before issue 8 changed the defaults; the held-out study above measures "
            "the product's defaults.",
            accuracy.headline(accuracy_payload),
        ]
    elif accuracy_payload:
        parts += ["## Headline", accuracy.headline(accuracy_payload)]
        summary = accuracy.bottom_line(accuracy_payload, mechanism_payload, found.get(adapt_time.NAME))
        if summary:
            parts += [summary]
    parts += [
        "## Verdicts",
        table(
            ["paper claim", "verdict", "numbers"],
            [
                ["1. similar tasks share more kept units", v1, t1],
                ["2a. SMSP@100 ≥ pruning from scratch@1000 (the paper's configuration)", v2s, t2s],
                *heldout_claims[:1],
                ["2b. SMSP > one-shot baselines at equal iterations (the paper's configuration)", v2o, t2o],
                *heldout_claims[1:],
                ["3. one score mask serves many budgets", v3, t3],
            ],
        ),
        "The one-shot baselines are what a user of Torch-Pruning would pick: `magnitude` and `taylor` scores come "
        "from `torch_pruning.importance.GroupMagnitudeImportance(p=1)` and `GroupTaylorImportance` over each "
        "coupled channel group (see `edge_smsp/models/unit_scores.py`; Taylor on 4 batches of the new task), then the same "
        "physical pruning and the same fine-tuning as SMSP. `scratch` is the pool-building method (iterative Taylor "
        "pruning with fine-tuning between rounds) run on the new task with 10x the iterations; `smsp-random` sums "
        "the masks of K random pool tasks instead of the K most similar.",
    ]
    parts += [text for module in BENCHMARKS if (text := module.section(found, plots))]
    # Mutation testing is a script run by hand, not a registered benchmark: its last stored result.
    if evidence_text := evidence.section(evidence.read_results()):
        parts.append(evidence_text)
    if mutation_text := mutation.section(mutation.read_results()):
        parts.append(mutation_text)
    missing = [module.NAME for module in BENCHMARKS if module.NAME not in found]
    if missing:
        parts.append(
            "Not run yet: " + ", ".join(f"`python -m benchmarks.{name} --full`" for name in missing) + "."
        )
    if found:
        parts.append(machine_section(found))
    parts.append(
        "*Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand.*"
    )
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--mode", choices=("full", "quick", "smoke"), default=None, help="force one mode")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    found = load_results(args.results_dir, args.mode)
    if not found:
        print(f"no results in {args.results_dir}; run e.g. python -m benchmarks.all --quick first")
        return 1
    plots = args.out.parent / "plots"
    text = render(found, plots)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(args.out)
    sources = ", ".join(f"{name} ({payload['mode']})" for name, payload in found.items())
    print(f"wrote {args.out} from {sources}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
