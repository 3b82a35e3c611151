"""Deploy-path commands: export (more, such as deploy and bench, register here too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_smsp.cli.common import print_json
from edge_smsp.errors import ExportError


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    register_export(subcommands)


def register_export(subcommands: argparse._SubParsersAction) -> None:
    """`edge-smsp export`: a saved pruned model -> checked ONNX + model card."""
    parser = subcommands.add_parser(
        "export",
        help="export a saved pruned model to ONNX (simplified, checked, parity-verified, with metadata)",
        description="Export a pruned model directory (model.safetensors + pruned.json) to ONNX, with a model "
        "card (.json) beside it.",
    )
    parser.add_argument("--model-dir", required=True, type=Path, help="directory written by prune/adapt")
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write (e.g. model.onnx)")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: 1)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler of `edge-smsp export`."""
    from edge_smsp.export import DEFAULT_OPSET, export_onnx, metadata_from_pruned

    model_dir: Path = args.model_dir
    if not model_dir.is_dir():
        raise ExportError(f"--model-dir {model_dir}: not a directory")
    from edge_smsp.prune import load_pruned

    model, meta = load_pruned(model_dir)
    image_size = int(meta["image_size"])
    result = export_onnx(
        model,
        args.out,
        image_size=image_size,
        metadata=metadata_from_pruned(model, meta),
        dynamic_batch=args.dynamic_batch,
        opset=args.opset or DEFAULT_OPSET,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"exported {result.onnx_path} ({result.size_bytes / 1024**2:.2f} MiB, opset {result.opset}, "
            f"parity max |diff| {result.max_abs_diff:.1e} on {result.parity_samples} inputs) "
            f"and card {result.card_path} in {result.seconds:.1f} s"
        )
    return 0
