"""onnxruntime as a device backend: CPU, CUDA, TensorRT... through its execution providers."""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import RuntimeToolError, engine_reason
from ..opsets import onnxruntime_max_opset
from ..precision import PRECISIONS, provider_options
from .base import FP32, Backend, Session


def import_onnxruntime() -> Any:
    """onnxruntime with its logger limited to errors, or an error naming the pip command."""
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache and not os.path.isdir(cache):
        # onnxruntime keeps a device id under it and warns on stderr, whatever its log level, when it cannot;
        # without it, it uses ~/.cache as XDG says.
        del os.environ["XDG_CACHE_HOME"]
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeToolError(
            "onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu on CUDA devices)"
        ) from None
    # Warnings and errors on stderr would be mistaken by the host for the command's error line: a load failure
    # is logged at ERROR (3) before it is raised, and the raised message is the one line we print. 4 = FATAL.
    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


def _describe(args: Any) -> List[Dict[str, Any]]:
    return [{"name": arg.name, "shape": list(arg.shape), "dtype": arg.type} for arg in args]


class OnnxRuntimeSession(Session):
    def __init__(self, session: Any, precision: str, run_options: Any) -> None:
        self._session = session
        self.precision = precision
        self._run_options = run_options

    def run(self, feeds: Dict[str, Any]) -> List[Any]:
        return self._session.run(None, feeds, self._run_options)

    def stop(self) -> bool:
        self._run_options.terminate = True  # checked between nodes and between a Loop's iterations
        return True

    def inputs(self) -> List[Dict[str, Any]]:
        return _describe(self._session.get_inputs())

    def outputs(self) -> List[Dict[str, Any]]:
        return _describe(self._session.get_outputs())

    def metadata(self) -> Dict[str, str]:
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def providers(self) -> List[str]:
        return list(self._session.get_providers())


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = (
        PRECISIONS  # QDQ int8 and fp16 graphs load on every provider; precision.py says which run natively
    )

    def __init__(self, ort: Any) -> None:
        self._ort = ort

    def version(self) -> str:
        return str(self._ort.__version__)

    def max_opset(self) -> Optional[int]:
        return onnxruntime_max_opset(self.version())

    def known_providers(self) -> List[str]:
        return list(self._ort.get_all_providers())

    def available_providers(self) -> List[str]:
        return list(self._ort.get_available_providers())

    def version_keys(self) -> Dict[str, str]:
        return {"onnxruntime_version": self.version()}

    def create_session(
        self,
        path: str,
        providers: Sequence[str],
        threads: int,
        precision: str = FP32,
        workdir: Optional[str] = None,
    ) -> Tuple[Session, List[str]]:
        ort = self._ort
        if precision not in self.precisions:
            raise RuntimeToolError(
                f"onnxruntime runs {', '.join(self.precisions)} models here, not {precision!r}"
            )
        known = set(self.known_providers())
        unknown = [name for name in providers if name not in known]
        if unknown:
            raise RuntimeToolError(
                f"unknown execution provider {unknown[0]!r} (onnxruntime knows: {', '.join(sorted(known))})"
            )
        available = self.available_providers()
        usable = [name for name in providers if name in available]
        skipped = [name for name in providers if name not in available]
        if not usable:
            raise RuntimeToolError(
                f"none of the requested providers is available in this onnxruntime build "
                f"(requested: {', '.join(providers)}; available: {', '.join(available)})"
            )
        if threads < 0:
            raise RuntimeToolError("--threads must be >= 0 (0 = onnxruntime's default)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # FATAL only: the raised error is reported in one line
        try:
            session = ort.InferenceSession(
                path, sess_options=options, providers=provider_options(usable, precision, workdir)
            )
        except Exception as error:  # onnxruntime raises its own exception types for every load failure
            raise RuntimeToolError(
                f"cannot load model {path}: onnxruntime {ort.__version__} refuses it ({engine_reason(error)}); "
                "export it again with edge-smsp export at an opset this onnxruntime runs"
            ) from None
        return OnnxRuntimeSession(session, precision, ort.RunOptions()), skipped


def create() -> Backend:
    """The onnxruntime backend (onnxruntime imported now)."""
    return OnnxRuntimeBackend(import_onnxruntime())
