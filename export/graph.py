"""ONNX graph passes applied after ``torch.onnx.export``.

* :func:`bypass_identities` removes the ``Identity`` nodes the exporter emits for shared weights.
* :func:`stabilize_logsumexp` writes every ``ReduceLogSumExp`` as ``max + log(sum(exp(x - max)))``:
  TensorRT's ONNX parser implements the op as a plain ``log(sum(exp(x)))``, which overflows for
  Sinkhorn scores beyond ~88 in fp32 (~11 in fp16).
* :func:`to_mixed_precision` makes the fp16 graph for a strongly typed TensorRT network: the
  transformer blocks compute in fp16, while LayerNorm, softmax, the SALAD head (Sinkhorn
  log-sum-exp, normalisations) and everything outside the blocks stay in fp32.

:func:`runs_in_fp16` is the one rule deciding the precision of a node (ONNX) or layer (TensorRT
network built from that ONNX, whose layers carry the ONNX node names).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
#: Op types (ONNX) and layer kinds (TensorRT ``LayerType`` names) that always run in fp32:
#: ViT LayerNorm statistics and attention softmax overflow or lose all precision in fp16.
FP32_KINDS = frozenset({
    "LayerNormalization", "Softmax", "ReduceLogSumExp", "ReduceMean", "ReduceL2", "ReduceSum", "Pow", "Sqrt",
    "NORMALIZATION", "SOFTMAX", "REDUCE",
})
_BLOCK = re.compile(r"/(blocks\.\d+|patch_embed)/")
_NORM_MODULE = re.compile(r"/norm\d*/")


def runs_in_fp16(name: str, kind: str) -> bool:
    """Whether the node or layer ``name`` of op type / layer kind ``kind`` may compute in fp16.

    Only the patch embedding and the transformer blocks do, minus their LayerNorms, softmaxes and
    reductions; unnamed or unknown layers default to fp32, which is always safe.
    """
    if not _BLOCK.search(name) or _NORM_MODULE.search(name):
        return False
    if kind in FP32_KINDS or "softmax" in name.lower() or "layernorm" in name.lower():
        return False
    return True


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset of ``model``."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def bypass_identities(model: onnx.ModelProto) -> int:
    """Drop ``Identity`` nodes (not producing a graph output); returns how many were removed."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def stabilize_logsumexp(model: onnx.ModelProto) -> int:
    """Replace each ``ReduceLogSumExp`` by its max-shifted form; returns how many were replaced."""
    graph = model.graph
    opset = opset_version(model)
    consts = _constant_values(graph)
    new_nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in graph.node:
        if node.op_type != "ReduceLogSumExp":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in np.atleast_1d(consts[node.input[1]])]
        else:
            axes = list(attrs.get("axes", []))
        if not axes:
            raise ValueError(f"{node.name}: ReduceLogSumExp over all axes is not supported by this pass")
        keepdims = int(attrs.get("keepdims", 1))
        base = node.name or f"ReduceLogSumExp_{replaced}"
        axes_name = f"{base}/stable/axes"
        graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name))
        x, out = node.input[0], node.output[0]
        t = {k: f"{base}/stable/{k}_output_0" for k in ("max", "shifted", "exp", "sum", "log", "lse")}
        # ReduceMax takes axes as an attribute up to opset 17 and as an input from 18 on.
        if opset >= 18:
            new_nodes.append(helper.make_node("ReduceMax", [x, axes_name], [t["max"]], f"{base}/stable/ReduceMax", keepdims=1))
        else:
            new_nodes.append(helper.make_node("ReduceMax", [x], [t["max"]], f"{base}/stable/ReduceMax", axes=axes, keepdims=1))
        new_nodes += [
            helper.make_node("Sub", [x, t["max"]], [t["shifted"]], f"{base}/stable/Sub"),
            helper.make_node("Exp", [t["shifted"]], [t["exp"]], f"{base}/stable/Exp"),
            helper.make_node("ReduceSum", [t["exp"], axes_name], [t["sum"]], f"{base}/stable/ReduceSum", keepdims=1),
            helper.make_node("Log", [t["sum"]], [t["log"]], f"{base}/stable/Log"),
            helper.make_node("Add", [t["log"], t["max"]], [out if keepdims else t["lse"]], f"{base}/stable/Add"),
        ]
        if not keepdims:
            new_nodes.append(helper.make_node("Squeeze", [t["lse"], axes_name], [out], f"{base}/stable/Squeeze"))
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return replaced


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def to_mixed_precision(
    model: onnx.ModelProto, fp16: Callable[[str, str], bool] = runs_in_fp16
) -> onnx.ModelProto:
    """A copy of the fp32 ``model`` where nodes with ``fp16(name, op_type)`` compute in fp16.

    Casts are inserted where fp16 and fp32 regions meet; weights and constants consumed by fp16
    nodes get fp16 copies. Graph inputs and outputs stay float32. The result is meant for
    TensorRT strongly typed networks (which take precision from the graph) and for GPU runtimes.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = _elem_types(model)
    consts = _constant_values(graph)
    const_producers = {n.output[0] for n in graph.node if n.op_type == "Constant"} | {t.name for t in graph.initializer}
    current: dict[str, int] = {name: types.get(name, TensorProto.UNDEFINED) for name in const_producers}
    current.update({i.name: i.type.tensor_type.elem_type for i in graph.input})
    converted: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def as_type(name: str, want: int) -> str:
        key = (name, want)
        if key in converted:
            return converted[key]
        suffix = "fp16" if want == TensorProto.FLOAT16 else "fp32"
        new = f"{name}__{suffix}"
        if name in consts:  # weights and constants are converted once, at export time
            dtype = np.float16 if want == TensorProto.FLOAT16 else np.float32
            graph.initializer.append(numpy_helper.from_array(consts[name].astype(dtype), new))
        else:
            new_nodes.append(helper.make_node("Cast", [name], [new], f"{name}/cast_{suffix}", to=want))
        converted[key] = new
        return new

    for node in graph.node:
        if node.op_type == "Constant":
            new_nodes.append(node)
            continue
        want = TensorProto.FLOAT16 if fp16(node.name, node.op_type) else TensorProto.FLOAT
        for i, name in enumerate(node.input):
            if name and types.get(name) in FLOAT_TYPES and current.get(name, types[name]) != want:
                node.input[i] = as_type(name, want)
        if want == TensorProto.FLOAT16:
            for attr in node.attribute:
                # Ops whose float output type comes from an attribute rather than from their inputs.
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        new_nodes.append(node)
        for out in node.output:
            if types.get(out) in FLOAT_TYPES:
                current[out] = want

    for out in graph.output:
        if current.get(out.name) == TensorProto.FLOAT16:
            # Rename the fp16 producer's output and cast back to the declared float32 output.
            inner = f"{out.name}__fp16"
            for node in new_nodes:
                for i, name in enumerate(node.output):
                    if name == out.name:
                        node.output[i] = inner
                for i, name in enumerate(node.input):
                    if name == out.name:
                        node.input[i] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], f"{out.name}/cast_fp32", to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(_toposort(new_nodes, graph))
    del graph.value_info[:]
    prune_initializers(model)
    return model


def prune_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node reads (e.g. fp32 originals of weights converted to fp16)."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    removed = len(graph.initializer) - len(kept)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return removed


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    # Casts were appended when first needed, possibly after their consumer: restore producer order.
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    return ordered


def node_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """Element type each named node computes in (type of its first float input), for checks."""
    types = _elem_types(model)
    result = {}
    for node in model.graph.node:
        for name in node.input:
            if types.get(name) in FLOAT_TYPES:
                result[node.name] = types[name]
                break
    return result
