"""``python -m core promote | onnx``: make a run the model Predict uses; export a promoted model to ONNX.

``onnx`` imports its engine module (and so torch) inside its own functions: ``promote`` starts without torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.data.accounts import SHELL
from core.runs import registry
from core.runs.layout import JobError
from core.runs.promotion import promote


def configure_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder or run id")
    parser.add_argument("--task", choices=registry.PROMOTABLE, default=None,
                        help="default: the run's own task")


def run_promote(args: argparse.Namespace) -> int:
    try:
        dest = promote(args.run, args.task, actor=SHELL)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"promoted {Path(args.run).name} -> {dest}")
    return 0


def configure_onnx(parser: argparse.ArgumentParser) -> None:
    from core.inference.onnx_export import ONNX_FILE

    parser.add_argument("task", choices=registry.ONNX_EXPORTABLE, help="which promoted model")
    parser.add_argument("--out", help=f"ONNX file (default: promoted/<task>/{ONNX_FILE})")


def run_onnx(args: argparse.Namespace) -> int:
    from core.inference.onnx_export import OnnxExportError, export_promoted

    try:
        result = export_promoted(args.task, args.out, actor=SHELL)
    except (OnnxExportError, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['path']}: {result['model']} {result['input_shape']} -> {result['output_shape']}, "
          f"onnxruntime vs torch max abs difference {result['max_abs_diff']:.2e}")
    return 0
