"""edge-smsp: one-shot SMSP pruning of pre-trained vision models for edge devices.

The public API, imported on first use (`import edge_smsp` stays light; the CLI starts without torch):

    from edge_smsp import load_backbone, score_units, save_pruned, load_pruned

    from edge_smsp.models import prune
    from edge_smsp import load_task, AdaptConfig, adapt, Pool, export_onnx, load_profile

ARCHITECTURE.md maps the subpackages behind these names.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from edge_smsp.core.version import __version__

# public name -> module that defines it
_PUBLIC: dict[str, str] = {
    # models
    "load_backbone": "edge_smsp.models.zoo",
    "backbone_spec": "edge_smsp.models.zoo",
    "prune": "edge_smsp.models.prune",
    "PruneSummary": "edge_smsp.models.prune",
    "save_pruned": "edge_smsp.models.pruned_model",
    "load_pruned": "edge_smsp.models.pruned_model",
    # criteria and data
    "score_units": "edge_smsp.criteria",
    "SCORE_SOURCES": "edge_smsp.criteria",
    "DATASETS": "edge_smsp.data",
    "load_task": "edge_smsp.data.tasks",
    "Task": "edge_smsp.data.tasks",
    # adaptation and the pool
    "AdaptConfig": "edge_smsp.adaptation",
    "AdaptResult": "edge_smsp.adaptation",
    "adapt": "edge_smsp.adaptation",
    "build_pool": "edge_smsp.pool.build",
    "Pool": "edge_smsp.pool",
    # devices, export, errors
    "load_profile": "edge_smsp.devices.profiles",
    "DeviceProfile": "edge_smsp.devices.profiles",
    "export_onnx": "edge_smsp.export.onnx_export",
    "EdgeSmspError": "edge_smsp.core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edge_smsp' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
