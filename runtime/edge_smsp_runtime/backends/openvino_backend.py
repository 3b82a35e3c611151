"""OpenVINO as a device backend (a demonstration of the seam: one file plus one registry line)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import RuntimeToolError, one_line
from .base import FP32, Backend, Session

_ONNX_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)"}


def _describe(ports: Any) -> List[Dict[str, Any]]:
    return [
        {
            "name": port.get_any_name(),
            "shape": [dim.get_length() if dim.is_static else "?" for dim in port.get_partial_shape()],
            "dtype": _ONNX_TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"),
        }
        for port in ports
    ]


class OpenVinoSession(Session):
    def __init__(self, compiled: Any, device: str, precision: str) -> None:
        self._compiled = compiled
        self._device = device
        self.precision = precision

    def run(self, feeds: Dict[str, Any]) -> List[Any]:
        results = self._compiled(feeds)
        return [results[port] for port in self._compiled.outputs]

    def inputs(self) -> List[Dict[str, Any]]:
        return _describe(self._compiled.inputs)

    def outputs(self) -> List[Dict[str, Any]]:
        return _describe(self._compiled.outputs)

    def metadata(self) -> Dict[str, str]:
        return {}

    def providers(self) -> List[str]:
        return [self._device]


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, ov: Any) -> None:
        self._ov = ov
        self._core = ov.Core()

    def version(self) -> str:
        return str(self._ov.__version__).split("-")[0]

    def max_opset(self) -> Optional[int]:
        return None

    def known_providers(self) -> List[str]:
        return self.available_providers()

    def available_providers(self) -> List[str]:
        return list(self._core.available_devices)

    def create_session(
        self, path: str, providers: Sequence[str], threads: int, precision: str = FP32
    ) -> Tuple[Session, List[str]]:
        devices = self.available_providers()
        usable = [name for name in providers if name in devices] or ["CPU"]
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        try:
            compiled = self._core.compile_model(self._core.read_model(path), usable[0], config)
        except Exception as error:  # OpenVINO raises RuntimeError for every load failure
            raise RuntimeToolError(f"cannot load model {path}: {one_line(error)}") from None
        return OpenVinoSession(compiled, usable[0], precision), [name for name in providers if name not in devices]


def create() -> Backend:
    try:
        import openvino
    except ImportError:
        raise RuntimeToolError("openvino is not installed: pip install openvino") from None
    return OpenVinoBackend(openvino)
