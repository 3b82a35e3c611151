"""Registries of named implementations: a table of name -> "module:attribute", imported on first use, so that
reading the names (the CLI's choices) imports nothing heavy."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from edge_smsp.core.errors import EdgeSmspError


def load_registered(
    table: Mapping[str, str], name: str, what: str, error: type[EdgeSmspError] = EdgeSmspError
) -> Any:
    """The object registered as `name` in `table`, instantiated; `error` naming the choices otherwise."""
    if name not in table:
        raise error(f"unknown {what} {name!r}: choose one of {', '.join(table)}")
    module, _, attribute = table[name].partition(":")
    return getattr(import_module(module), attribute)()
