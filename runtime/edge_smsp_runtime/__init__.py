"""edge-smsp-runtime: benchmark and run edge-smsp ONNX models on a device with numpy + onnxruntime only."""

__version__ = "0.1.0"

# metadata_props keys the host's export writes into every model (values are strings; JSON where structured).
METADATA_KEYS = (
    "labels",  # JSON list of class names, index = output position
    "input_size",  # JSON int (square side, e.g. "64") or JSON [height, width]
    "mean",  # JSON list of per-channel means applied to pixels scaled to [0, 1]
    "std",  # JSON list of per-channel standard deviations
    "backbone",  # backbone name, e.g. "efficientnet_lite0"
    "ratio",  # pruning ratio as a JSON number
    "task",  # task description (free text or JSON)
    "edge_smsp_version",  # version of the host package that exported the model
)
