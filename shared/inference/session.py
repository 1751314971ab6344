"""ONNX Runtime CPU sessions, configured the same way for every task."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from shared.core.errors import BundleError


def open_session(
    model_path: Path,
    threads: int | None,
    *,
    mem_pattern: bool,
    model_bytes: bytes | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with `threads` intra-op threads (None: one per core) and one inter-op
    thread, over `model_bytes` when given (a graph edited in memory), else the file; `arena` False gives each
    run's buffers back when it ends instead of keeping them in ONNX Runtime's arena. Raises BundleError with the
    first line of ONNX Runtime's message when the model does not load."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_mem_pattern = mem_pattern
    options.enable_cpu_mem_arena = arena
    try:
        source: str | bytes = model_bytes if model_bytes is not None else str(model_path)
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own unrelated types for bad graphs
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise BundleError(f"ONNX Runtime cannot load {model_path}: {first_line}") from None
