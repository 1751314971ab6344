"""Read the few facts we need from an ONNX file's protobuf without the `onnx` package.

The lean runtime has ONNX Runtime but not `onnx`; ONNX Runtime does not expose the graph's nodes or the
opset, and we need both: the opset for the manifest, and the op that first reads the image input to know
whether normalization is baked into the graph (AutoML's `enable_onnx_normalization` puts a `Div` there).
Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, OperatorSetIdProto).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

_MODEL_GRAPH = 7
_MODEL_OPSET_IMPORT = 8
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_TENSOR_NAME = 8
_VALUE_NAME = 1
_VALUE_TYPE = 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE = 1
_DIM_PARAM = 2
_NODE_INPUT = 1
_NODE_OP_TYPE = 4
_OPSET_DOMAIN = 1
_OPSET_VERSION = 2

# Protobuf wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX ModelProto."""


@dataclass(frozen=True)
class OnnxInfo:
    """Opset of the default domain; the graph's real inputs (initializers excluded) with their shapes
    (an int per fixed dimension, the symbol's name or None for a dynamic one); per value name, the op
    types of the nodes that read it; and the graph's outputs in order, with their shapes."""

    opset: int | None
    inputs: tuple[tuple[str, tuple[int | str | None, ...]], ...]
    consumers: dict[str, tuple[str, ...]]
    outputs: tuple[tuple[str, tuple[int | str | None, ...]], ...] = ()

    def first_ops(self) -> tuple[str, ...]:
        """Op types of the nodes reading the first real input (the image)."""
        if not self.inputs:
            return ()
        return self.consumers.get(self.inputs[0][0], ())


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def field_spans(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview, int, int]]:
    """(field number, wire type, value, start, end) of each field of one message; length-delimited values as
    views; `start:end` is the whole field, key included (what an edit of the message replaces)."""
    pos = 0
    end = len(buf)
    while pos < end:
        start = pos
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == VARINT:
            value, pos = varint(buf, pos)
        elif wire == I64:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == LEN:
            length, pos = varint(buf, pos)
            if pos + length > end:
                raise OnnxFormatError("field runs past the end of the message")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == I32:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
        yield number, wire, value, start, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for one message; length-delimited values as views."""
    for number, wire, value, _, _ in field_spans(buf):
        yield number, wire, value


def text(value: int | memoryview) -> str:
    """A string field's value (empty for a field that is not length-delimited)."""
    return bytes(value).decode("utf-8", "replace") if isinstance(value, memoryview) else ""


def _shape(type_proto: memoryview) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for n, _, tensor in _fields(type_proto):
        if n != _TYPE_TENSOR or not isinstance(tensor, memoryview):
            continue
        for tn, _, shape in _fields(tensor):
            if tn != _TENSOR_TYPE_SHAPE or not isinstance(shape, memoryview):
                continue
            for sn, _, dim in _fields(shape):
                if sn != _SHAPE_DIM or not isinstance(dim, memoryview):
                    continue
                value: int | str | None = None
                for dn, _, dv in _fields(dim):
                    if dn == _DIM_VALUE and isinstance(dv, int):
                        value = dv
                    elif dn == _DIM_PARAM:
                        value = text(dv)
                dims.append(value)
    return tuple(dims)


def read_onnx_info(data: bytes) -> OnnxInfo:
    """Parse a serialized ModelProto; raise OnnxFormatError if it is not one."""
    opset: int | None = None
    consumers: dict[str, list[str]] = {}
    graph_inputs: list[tuple[str, tuple[int | str | None, ...]]] = []
    graph_outputs: list[tuple[str, tuple[int | str | None, ...]]] = []
    initializers: set[str] = set()
    for number, wire, value in _fields(memoryview(data)):
        if number == _MODEL_OPSET_IMPORT and isinstance(value, memoryview):
            domain, version = "", None
            for n, _, v in _fields(value):
                if n == _OPSET_DOMAIN and isinstance(v, memoryview):
                    domain = bytes(v).decode("utf-8", "replace")
                elif n == _OPSET_VERSION and isinstance(v, int):
                    version = v
            if domain in ("", "ai.onnx") and version is not None:
                opset = version
        elif number == _MODEL_GRAPH and isinstance(value, memoryview):
            for n, _, node in _fields(value):
                if not isinstance(node, memoryview):
                    continue
                if n == _GRAPH_INITIALIZER:
                    initializers.update(text(v) for fn, _, v in _fields(node) if fn == _TENSOR_NAME)
                    continue
                if n in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                    name: str = ""
                    shape: tuple[int | str | None, ...] = ()
                    for fn, _, fv in _fields(node):
                        if fn == _VALUE_NAME:
                            name = text(fv)
                        elif fn == _VALUE_TYPE and isinstance(fv, memoryview):
                            shape = _shape(fv)
                    (graph_inputs if n == _GRAPH_INPUT else graph_outputs).append((name, shape))
                    continue
                if n != _GRAPH_NODE:
                    continue
                inputs: list[str] = []
                op_type = ""
                for fn, _, fv in _fields(node):
                    if fn == _NODE_INPUT and isinstance(fv, memoryview):
                        inputs.append(bytes(fv).decode("utf-8", "replace"))
                    elif fn == _NODE_OP_TYPE and isinstance(fv, memoryview):
                        op_type = bytes(fv).decode("utf-8", "replace")
                for name in inputs:
                    consumers.setdefault(name, []).append(op_type)
        elif wire not in (VARINT, I64, LEN, I32):
            raise OnnxFormatError("not an ONNX model")
    return OnnxInfo(
        opset=opset,
        inputs=tuple((name, shape) for name, shape in graph_inputs if name not in initializers),
        consumers={k: tuple(v) for k, v in consumers.items()},
        outputs=tuple(graph_outputs),
    )
