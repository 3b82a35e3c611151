"""Registry of device inference engines. Adding one is a new module here plus one line in BACKENDS."""

import importlib
from typing import List, Optional

from ..errors import RuntimeToolError
from .base import Backend, Session

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "Session", "backend_names", "get_backend"]

# Backend name -> module in this package whose create() returns the Backend. Modules import their engine only
# when created, so a device needs only the engines it uses.
BACKENDS = {
    "onnxruntime": "onnxruntime_backend",
}
DEFAULT_BACKEND = "onnxruntime"


def backend_names() -> List[str]:
    """Registered backend names, the default first."""
    return [DEFAULT_BACKEND] + sorted(name for name in BACKENDS if name != DEFAULT_BACKEND)


def get_backend(name: Optional[str] = None) -> Backend:
    """The backend registered under name (default: onnxruntime), its engine imported."""
    name = name or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise RuntimeToolError(f"unknown runtime {name!r} (available: {', '.join(backend_names())})")
    module = importlib.import_module("." + BACKENDS[name], __name__)
    return module.create()
