"""Numeric precisions a model can ship in: the one table that profiles, the CLI, export, bench and the pool's
measurements read. Torch-free."""

from __future__ import annotations

FP32, INT8, FP16 = "fp32", "int8", "fp16"
# name -> what it means on a device
PRECISIONS: dict[str, str] = {
    FP32: "float32 weights and activations (the exported graph as is)",
    INT8: "int8 weights (per channel) and activations in QDQ form, calibrated on the task's images",
    FP16: "float16 weights and activations with float32 inputs and outputs (GPU providers)",
}
DEFAULT_PRECISION = FP32
# A profile or --precision may leave the choice to the planner (ratio and precision chosen together).
AUTO = "auto"
# The INT8 accuracy gate: validation accuracy points INT8 may lose against fp32 before fp32 ships instead
# (`--max-int8-drop`; edge_smsp.export.precision).
DEFAULT_MAX_INT8_DROP_PT = 1.0
