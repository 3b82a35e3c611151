"""The interface every device inference engine implements (onnxruntime first; TensorRT or OpenVINO later)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

FP32 = "fp32"


class Session:
    """One model loaded on a backend, ready to run at `precision`."""

    precision = FP32

    def run(self, feeds: Dict[str, Any]) -> List[Any]:
        """Outputs (numpy arrays, graph order) for inputs given by name."""
        raise NotImplementedError

    def stop(self) -> bool:
        """Ask the run in progress, from another thread, to end with an error; False when the engine cannot."""
        return False

    def inputs(self) -> List[Dict[str, Any]]:
        """Graph inputs: name, shape (symbolic dims as names) and ONNX element type such as 'tensor(float)'."""
        raise NotImplementedError

    def outputs(self) -> List[Dict[str, Any]]:
        """Graph outputs, described like inputs()."""
        raise NotImplementedError

    def metadata(self) -> Dict[str, str]:
        """The model's metadata_props."""
        raise NotImplementedError

    def providers(self) -> List[str]:
        """Execution providers (or devices) the session actually runs on, in order of preference."""
        raise NotImplementedError


class Backend:
    """A device inference engine. `name` is its key in the registry (backends/__init__.py)."""

    name = ""
    precisions = (FP32,)  # what create_session can run; the first is the default

    def version(self) -> str:
        """The engine's own version, e.g. onnxruntime's '1.10.0'."""
        raise NotImplementedError

    def max_opset(self) -> Optional[int]:
        """Highest ai.onnx opset the engine runs; None when not known."""
        raise NotImplementedError

    def known_providers(self) -> List[str]:
        """Every execution provider (or device) name the engine knows, available here or not."""
        raise NotImplementedError

    def available_providers(self) -> List[str]:
        """The providers (or devices) this build can use on this machine."""
        raise NotImplementedError

    def version_keys(self) -> Dict[str, str]:
        """Engine-specific version keys that reports carry, e.g. {'onnxruntime_version': '1.10.0'}."""
        return {}

    def create_session(
        self,
        path: str,
        providers: Sequence[str],
        threads: int,
        precision: str = FP32,
        workdir: Optional[str] = None,
    ) -> Tuple[Session, List[str]]:
        """Load a model on the requested providers that exist here; returns it and the providers skipped.

        `precision` is the model's own (model_precision); caches an engine keeps (TensorRT's) go under `workdir`.
        """
        raise NotImplementedError
