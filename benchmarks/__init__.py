"""Benchmarks of edge-smsp against the paper's claims: `python -m benchmarks.<name> --quick|--full`."""
