"""A classifier's embedding: the tensor that feeds its final linear layer, exposed as an extra ONNX output.

The input of the last Gemm (or MatMul, with or without its bias Add) before the logits is the pooled feature
vector the classifier separates classes with: images the model finds alike lie close together there. It is
found by walking back from the logits output (the graph's first output) and made a graph output named
`embedding` by appending one Identity node and one graph output to the ModelProto.

The edit works on the serialized protobuf, like shared.bundle.onnxinfo, without the `onnx` package: the same
edit runs when a model is published or converted (the edited file is what the store holds, recorded in the
manifest as `embedding` {output, dimensions, source}) and when a folder without it is loaded for serving
(AZUREML_MODEL_DIR, an AutoML run folder, the bundled sample, a version published before embeddings existed),
where `onnx` is not installed and must not be imported. Appending fields to a protobuf message is how
protobuf merges repeated fields, so every other byte of the model stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.bundle.onnxinfo import LEN as _LEN
from shared.bundle.onnxinfo import VARINT as _VARINT
from shared.bundle.onnxinfo import OnnxFormatError
from shared.bundle.onnxinfo import field_spans as _fields
from shared.bundle.onnxinfo import text as _text
from shared.bundle.onnxinfo import varint as _varint

EMBEDDING_OUTPUT = "embedding"

_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_GRAPH_OUTPUT = 12
_NODE_INPUT = 1
_NODE_OUTPUT = 2
_NODE_NAME = 3
_NODE_OP_TYPE = 4
_NODE_ATTRIBUTE = 5
_ATTR_NAME = 1
_ATTR_I = 3
_TENSOR_DIMS = 1
_TENSOR_NAME = 8
_VALUE_NAME = 1
_VALUE_TYPE = 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE = 1
_TENSOR_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE = 1
_DIM_PARAM = 2
_FLOAT = 1

# Ops that may sit between the final linear layer and the logits output without changing what it computes.
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze"})


@dataclass(frozen=True)
class EmbeddingSite:
    """Where a classifier's embedding is: `tensor`, the value feeding the final linear layer `op` (Gemm or
    MatMul); `dimensions` from that layer's weight (None when the weight is not a plain initializer);
    `batch` the logits output's first dimension (a name, a size or None)."""

    tensor: str
    op: str
    dimensions: int | None
    batch: int | str | None


@dataclass(frozen=True)
class Embedding:
    """A bundle's embedding: graph output `output` of `dimensions` floats per image (None until a session has
    run, when the weight does not say), fed by `source`. `in_file` is False when model.onnx lacks the output
    and it is added in memory when the model is opened (edit_model_bytes)."""

    output: str
    dimensions: int | None
    source: str
    in_file: bool

    def as_manifest(self) -> dict[str, Any]:
        return {"output": self.output, "dimensions": self.dimensions, "source": self.source}


# -- protobuf reading --------------------------------------------------------------------------------------


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int]


def _node(buf: memoryview) -> _Node:
    node = _Node("", [], [], {})
    for n, _, v, _, _ in _fields(buf):
        if n == _NODE_INPUT:
            node.inputs.append(_text(v))
        elif n == _NODE_OUTPUT:
            node.outputs.append(_text(v))
        elif n == _NODE_OP_TYPE:
            node.op = _text(v)
        elif n == _NODE_ATTRIBUTE and isinstance(v, memoryview):
            name, number = "", None
            for an, _, av, _, _ in _fields(v):
                if an == _ATTR_NAME:
                    name = _text(av)
                elif an == _ATTR_I and isinstance(av, int):
                    number = _signed(av)
            if number is not None:
                node.ints[name] = number
    return node


def _dims(buf: memoryview) -> tuple[str, list[int]]:
    name, dims = "", []
    for n, wire, v, _, _ in _fields(buf):
        if n == _TENSOR_NAME:
            name = _text(v)
        elif n == _TENSOR_DIMS:
            if wire == _VARINT and isinstance(v, int):
                dims.append(_signed(v))
            elif isinstance(v, memoryview):  # packed
                pos = 0
                while pos < len(v):
                    d, pos = _varint(v, pos)
                    dims.append(_signed(d))
    return name, dims


def _first_dim(value_info: memoryview) -> int | str | None:
    for n, _, v, _, _ in _fields(value_info):
        if n != _VALUE_TYPE or not isinstance(v, memoryview):
            continue
        for tn, _, tv, _, _ in _fields(v):
            if tn != _TYPE_TENSOR or not isinstance(tv, memoryview):
                continue
            for sn, _, sv, _, _ in _fields(tv):
                if sn != _TENSOR_SHAPE or not isinstance(sv, memoryview):
                    continue
                for dn, _, dv, _, _ in _fields(sv):
                    if dn != _SHAPE_DIM or not isinstance(dv, memoryview):
                        continue
                    for xn, _, xv, _, _ in _fields(dv):
                        if xn == _DIM_VALUE and isinstance(xv, int):
                            return xv
                        if xn == _DIM_PARAM:
                            return _text(xv)
                    return None
    return None


@dataclass
class _Graph:
    nodes: list[_Node]
    producers: dict[str, _Node]
    initializers: dict[str, list[int]]
    outputs: list[tuple[str, int | str | None]]
    names: set[str]


def _graph(graph: memoryview) -> _Graph:
    parsed = _Graph([], {}, {}, [], set())
    for n, _, v, _, _ in _fields(graph):
        if not isinstance(v, memoryview):
            continue
        if n == _GRAPH_NODE:
            node = _node(v)
            parsed.nodes.append(node)
            for out in node.outputs:
                parsed.producers[out] = node
                parsed.names.add(out)
        elif n == _GRAPH_INITIALIZER:
            name, dims = _dims(v)
            parsed.initializers[name] = dims
            parsed.names.add(name)
        elif n == _GRAPH_OUTPUT:
            name = next((_text(fv) for fn, _, fv, _, _ in _fields(v) if fn == _VALUE_NAME), "")
            parsed.outputs.append((name, _first_dim(v)))
            parsed.names.add(name)
    return parsed


def _graph_field(model: memoryview) -> tuple[memoryview, int, int]:
    for n, _, v, start, end in _fields(model):
        if n == _MODEL_GRAPH and isinstance(v, memoryview):
            return v, start, end
    raise OnnxFormatError("the model has no graph")


# -- finding the embedding ---------------------------------------------------------------------------------


def _weight_in(graph: _Graph, weight: str, transposed: bool) -> int | None:
    """The input width K of a linear layer's weight: [N, K] when `transposed`, else [K, N]."""
    dims = graph.initializers.get(weight)
    if dims is None:
        producer = graph.producers.get(weight)
        # A weight stored as [N, K] and transposed in the graph (some exporters write MatMul(x, Transpose(W))).
        if producer is not None and producer.op == "Transpose" and producer.inputs:
            dims = graph.initializers.get(producer.inputs[0])
            transposed = not transposed
    if dims is None or len(dims) != 2:
        return None
    return dims[1] if transposed else dims[0]


def find_embedding(model_bytes: bytes) -> EmbeddingSite | None:
    """Where the final linear layer's input is, walking back from the first graph output; None when the
    graph does not end in one (a detector, or a classifier whose head is not Gemm/MatMul).
    Raises OnnxFormatError when the bytes are not a ModelProto."""
    graph_bytes, _, _ = _graph_field(memoryview(model_bytes))
    return _site(_graph(graph_bytes))


def _site(graph: _Graph) -> EmbeddingSite | None:
    if not graph.outputs:
        return None
    logits, batch = graph.outputs[0]
    value = logits
    for _ in range(16):
        node = graph.producers.get(value)
        if node is None or not node.inputs:
            return None
        if node.op in _PASS_THROUGH:
            value = node.inputs[0]
            continue
        if node.op == "Add" and len(node.inputs) == 2:
            # MatMul + bias: follow the input that a MatMul produces.
            matmul = next(
                (x for x in node.inputs if (p := graph.producers.get(x)) is not None and p.op == "MatMul"), None
            )
            if matmul is None:
                return None
            value = matmul
            continue
        if node.op == "Gemm" and len(node.inputs) >= 2:
            if node.ints.get("transA", 0):
                return None
            width = _weight_in(graph, node.inputs[1], bool(node.ints.get("transB", 0)))
            return EmbeddingSite(tensor=node.inputs[0], op="Gemm", dimensions=width, batch=batch)
        if node.op == "MatMul" and len(node.inputs) == 2:
            return EmbeddingSite(
                tensor=node.inputs[0], op="MatMul", dimensions=_weight_in(graph, node.inputs[1], False), batch=batch
            )
        return None
    return None


def output_names(model_bytes: bytes) -> list[str]:
    """The graph's output names, in order. Raises OnnxFormatError."""
    graph_bytes, _, _ = _graph_field(memoryview(model_bytes))
    return [name for name, _ in _graph(graph_bytes).outputs]


# -- adding the output -------------------------------------------------------------------------------------


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _enc_varint(number << 3 | _LEN) + _enc_varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _enc_varint(number << 3 | _VARINT) + _enc_varint(value)


def _dim(value: int | str | None) -> bytes:
    if isinstance(value, int):
        return _len_field(_SHAPE_DIM, _int_field(_DIM_VALUE, value))
    if isinstance(value, str) and value:
        return _len_field(_SHAPE_DIM, _len_field(_DIM_PARAM, value.encode()))
    return _len_field(_SHAPE_DIM, b"")


def add_embedding_output(model_bytes: bytes, site: EmbeddingSite, name: str = EMBEDDING_OUTPUT) -> bytes:
    """The model with `Identity(site.tensor) -> name` appended and `name` added as the last graph output
    (float, [batch, dimensions] when the width is known). Every other byte is kept. Raises OnnxFormatError,
    or ValueError when `name` is already a value of the graph."""
    model = memoryview(model_bytes)
    graph_bytes, start, end = _graph_field(model)
    return _added(model, graph_bytes, start=start, end=end, graph=_graph(graph_bytes), site=site, name=name)


def _added(
    model: memoryview, graph_bytes: memoryview, *, start: int, end: int, graph: _Graph, site: EmbeddingSite, name: str
) -> bytes:
    if name in graph.names:
        raise ValueError(f"the graph already has a value named {name!r}")
    node = (
        _len_field(_NODE_INPUT, site.tensor.encode())
        + _len_field(_NODE_OUTPUT, name.encode())
        + _len_field(_NODE_NAME, f"{name}_output".encode())
        + _len_field(_NODE_OP_TYPE, b"Identity")
    )
    tensor_type = _int_field(_TENSOR_ELEM_TYPE, _FLOAT)
    if site.dimensions is not None:
        tensor_type += _len_field(_TENSOR_SHAPE, _dim(site.batch) + _dim(site.dimensions))
    value_info = _len_field(_VALUE_NAME, name.encode()) + _len_field(_VALUE_TYPE, _len_field(_TYPE_TENSOR, tensor_type))
    tail = _len_field(_GRAPH_NODE, node) + _len_field(_GRAPH_OUTPUT, value_info)
    header = _enc_varint(_MODEL_GRAPH << 3 | _LEN) + _enc_varint(len(graph_bytes) + len(tail))
    # One copy of the model (hundreds of MB for a ViT-L): the pieces are joined once.
    return b"".join((model[:start], header, graph_bytes, tail, model[end:]))


def locate(output_names: list[str], manifest: dict[str, Any] | None, classifier: bool) -> Embedding | None:
    """A bundle's embedding from what its loader already read (the graph's output names, the manifest): the
    output the manifest names, or one called `embedding`, when the file has it; for a classifier without one,
    an embedding to add when it is first asked for (edit_model_bytes: the graph is walked then, not at every
    load); None for a detector."""
    recorded = manifest.get("embedding") if isinstance(manifest, dict) else None
    if isinstance(recorded, dict) and recorded.get("output") in output_names[1:]:
        dims = recorded.get("dimensions")
        return Embedding(
            output=str(recorded["output"]),
            dimensions=dims if isinstance(dims, int) and not isinstance(dims, bool) else None,
            source=str(recorded.get("source") or ""),
            in_file=True,
        )
    if EMBEDDING_OUTPUT in output_names[1:]:
        return Embedding(output=EMBEDDING_OUTPUT, dimensions=None, source="", in_file=True)
    if not classifier:
        return None
    return Embedding(output=EMBEDDING_OUTPUT, dimensions=None, source="", in_file=False)


def manifest_entry(model_bytes: bytes) -> tuple[bytes | None, dict[str, Any] | None]:
    """For a version about to be stored: the model with its embedding output (None when the file has it
    already) and the manifest's `embedding` entry (None, and no edit, when the graph has no final linear
    layer). Raises OnnxFormatError."""
    model = memoryview(model_bytes)
    graph_bytes, start, end = _graph_field(model)
    graph = _graph(graph_bytes)
    site = _site(graph)
    if site is None:
        return None, None
    entry = {"output": EMBEDDING_OUTPUT, "dimensions": site.dimensions, "source": site.tensor}
    if EMBEDDING_OUTPUT in [output for output, _ in graph.outputs[1:]]:
        return None, entry
    return _added(model, graph_bytes, start=start, end=end, graph=graph, site=site, name=EMBEDDING_OUTPUT), entry


def edit_model_bytes(model_bytes: bytes) -> bytes:
    """`model_bytes` with the embedding output added (find_embedding + add_embedding_output); unchanged when
    it already has an output named `embedding`. Raises OnnxFormatError, or ValueError when the graph has no
    final linear layer."""
    model = memoryview(model_bytes)
    graph_bytes, start, end = _graph_field(model)
    graph = _graph(graph_bytes)
    if EMBEDDING_OUTPUT in [output for output, _ in graph.outputs[1:]]:
        return model_bytes
    site = _site(graph)
    if site is None:
        raise ValueError("the graph does not end in a Gemm or MatMul layer, so it has no embedding to expose")
    return _added(model, graph_bytes, start=start, end=end, graph=graph, site=site, name=EMBEDDING_OUTPUT)
