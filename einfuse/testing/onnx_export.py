"""Graph -> ONNX export, so that onnxruntime can serve as a second oracle and failing
cases can be shared as .onnx files.

    model = to_onnx(graph)            # onnx.ModelProto at EXPORT_OPSET (23 with attention)
    outputs = run_onnxruntime(model, inputs)

Core ops carry the semantics of the newest ONNX opset with static parameters as
attributes; the exporter turns them back into ONNX nodes (axes, shapes, pads, slice
bounds, split sizes... become int64 initializers). An op without an export rule, or a
variant ONNX cannot express at EXPORT_OPSET, raises `UnsupportedOpError` naming the
node: callers (the differential checker) then skip the onnxruntime oracle.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from einfuse.errors import UnsupportedOpError
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops.reduce import AXIS_REDUCTIONS
from einfuse.ir.types import DType, format_dim

EXPORT_OPSET = 21

# core op -> ONNX op type, where the CamelCase of the name is not it.
_NAMES = {
    "is_nan": "IsNaN",
    "is_inf": "IsInf",
    "prelu": "PRelu",
    "bitshift": "BitShift",
    "batch_norm": "BatchNormalization",
    "instance_norm": "InstanceNormalization",
    "layer_norm": "LayerNormalization",
    "group_norm": "GroupNormalization",
    "lrn": "LRN",
    "matmul": "MatMul",
    "argmax": "ArgMax",
    "argmin": "ArgMin",
    "cumsum": "CumSum",
    "topk": "TopK",
    "gather_nd": "GatherND",
    "scatter_nd": "ScatterND",
    "nonzero": "NonZero",
    "conv_transpose": "ConvTranspose",
    "lp_normalization": "LpNormalization",
}

# Ops exported as they are: one ONNX node, attributes converted by kind, same operands.
_DIRECT = {
    # elementwise
    "abs",
    "acos",
    "acosh",
    "add",
    "and",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "bitshift",
    "bitwise_and",
    "bitwise_not",
    "bitwise_or",
    "bitwise_xor",
    "ceil",
    "celu",
    "cos",
    "cosh",
    "div",
    "elu",
    "equal",
    "erf",
    "exp",
    "floor",
    "gelu",
    "greater",
    "greater_or_equal",
    "hard_sigmoid",
    "hard_swish",
    "identity",
    "is_inf",
    "is_nan",
    "leaky_relu",
    "less",
    "less_or_equal",
    "log",
    "max",
    "mean",
    "min",
    "mish",
    "mod",
    "mul",
    "neg",
    "not",
    "or",
    "pow",
    "prelu",
    "reciprocal",
    "relu",
    "round",
    "selu",
    "shrink",
    "sigmoid",
    "sign",
    "sin",
    "sinh",
    "softplus",
    "softsign",
    "sqrt",
    "sub",
    "sum",
    "tan",
    "tanh",
    "thresholded_relu",
    "where",
    "xor",
    "dequantize_linear",
    # others whose attributes ONNX takes as attributes
    "argmax",
    "argmin",
    "transpose",
    "flatten",
    "concat",
    "gather",
    "gather_elements",
    "gather_nd",
    "depth_to_space",
    "matmul",
    "gemm",
    "einsum",
    "softmax",
    "log_softmax",
    "hardmax",
    "batch_norm",
    "instance_norm",
    "group_norm",
    "lrn",
    "lp_normalization",
    "mean_variance_normalization",
    "global_average_pool",
    "global_max_pool",
    "global_lp_pool",
    "size",
    "space_to_depth",
    "reverse_sequence",
}

# Attributes a core op has that its ONNX op does not (dropped when at their default).
_DROP = {
    "cast": {"round_mode": "up"},
    "einsum": {"combine": "mul", "reduce": "sum"},  # ONNX Einsum is always mul/sum (checked below)
    "max_pool": {"with_indices": None},
    "layer_norm": {"with_stats": None},
    "space_to_depth": {"mode": "DCR"},
}

_REDUCE = frozenset(AXIS_REDUCTIONS)


def onnx_op_name(op: str) -> str:
    return _NAMES.get(op) or "".join(part.capitalize() for part in op.split("_"))


def _dtype_to_onnx(dtype: DType) -> int:
    from einfuse.frontends.onnx import DTYPE_TO_ONNX

    return DTYPE_TO_ONNX[dtype]


class _Exporter:
    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = {v.name for v in graph.values()}
        self._count = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"_{hint}_{self._count}"
            if name not in self._names:
                self._names.add(name)
                return name

    def ints(self, values, hint: str) -> str:
        """An int64 initializer holding `values` (1-D)."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64).reshape(-1), name))
        return name

    def scalar(self, value, dtype, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(_tensor(np.asarray(value, dtype), name))
        return name

    def emit(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"n{len(self.nodes)}", **attrs))

    def names(self, node: Node) -> list[str]:
        return ["" if v is None else v.name for v in node.inputs]

    def unsupported(self, node: Node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{node.label}: cannot export to ONNX: {why}")


def _tensor(arr: np.ndarray, name: str) -> onnx.TensorProto:
    dtype = DType.from_numpy(arr.dtype)
    if dtype in (DType.f64, DType.f32, DType.f16, DType.bool) or dtype.is_int:
        return numpy_helper.from_array(np.array(arr, order="C"), name)  # ascontiguousarray makes 0-d 1-d
    # bfloat16 / float8: raw bytes with the ONNX element type.
    t = TensorProto()
    t.name = name
    t.data_type = _dtype_to_onnx(dtype)
    t.dims.extend(arr.shape)
    t.raw_data = np.array(arr, order="C").tobytes()
    return t


def _attr_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, DType):
        return _dtype_to_onnx(v)
    if isinstance(v, tuple):
        if all(isinstance(x, bool) for x in v):
            return [int(x) for x in v]
        return list(v)
    return v


def _direct_attrs(node: Node) -> dict:
    drop = _DROP.get(node.op, {})
    out = {}
    for k, v in node.attrs.items():
        if k in drop:
            continue
        if isinstance(v, tuple) and not v:
            continue  # empty lists mean "default" for conv/pool style attributes
        out[k] = _attr_value(v)
    return out


def _value_info(v: Value) -> onnx.ValueInfoProto:
    shape = [d if isinstance(d, int) else format_dim(d) for d in v.shape]
    return helper.make_tensor_value_info(v.name, _dtype_to_onnx(v.dtype), shape)


def to_onnx(graph: Graph, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """The ONNX model of `graph` (symbolic dims become dim_params). Raises
    UnsupportedOpError for a node with no ONNX form at `opset`."""
    if any(n.op == "attention" for n in graph.nodes):
        opset = max(opset, 23)  # Attention is new in opset 23
    ex = _Exporter(graph, opset)
    for name, (v, arr) in graph.constants.items():
        ex.initializers.append(_tensor(arr, v.name))
    for node in graph.nodes:
        _export_node(ex, node)
    outputs = []
    seen: set[str] = set()
    for v in graph.outputs:
        name = v.name
        # ONNX outputs must be computed by nodes and named once: copy others.
        if graph.producer(v) is None or name in seen:
            name = ex.fresh("out")
            ex.emit("Identity", [v.name], [name])
            shape = [d if isinstance(d, int) else format_dim(d) for d in v.shape]
            outputs.append(helper.make_tensor_value_info(name, _dtype_to_onnx(v.dtype), shape))
        else:
            outputs.append(_value_info(v))
        seen.add(name)
    g = helper.make_graph(
        ex.nodes,
        "einfuse_export",
        [_value_info(v) for v in graph.inputs],
        outputs,
        initializer=ex.initializers,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="einfuse")
    model.ir_version = min(model.ir_version, 10)  # onnxruntime 1.2x reads IR version 10
    return model


def output_names(graph: Graph, model: onnx.ModelProto) -> list[str]:
    """The ONNX output names, in the order of graph.outputs."""
    return [o.name for o in model.graph.output]


def _export_node(ex: _Exporter, node: Node) -> None:
    op = node.op
    ins = ex.names(node)
    outs = [v.name for v in node.outputs]
    a = node.attrs
    if op == "einsum" and (a["combine"], a["reduce"]) != ("mul", "sum"):
        raise ex.unsupported(node, f"combine={a['combine']!r}, reduce={a['reduce']!r} (ONNX Einsum is mul/sum)")
    if op in _DIRECT:
        ex.emit(onnx_op_name(op), ins, outs, **_direct_attrs(node))
    elif op in _REDUCE:
        extra = [ex.ints(a["axes"], "axes")] if a["axes"] else []
        ex.emit(
            onnx_op_name(op),
            ins + extra,
            outs,
            keepdims=int(a["keepdims"]),
            noop_with_empty_axes=int(a["noop_with_empty_axes"]),
        )
    elif op == "cast":
        attrs = {"to": _dtype_to_onnx(a["to"])}
        if a["to"].is_float and a["to"].itemsize == 1:
            attrs["saturate"] = int(a["saturate"])
        if a.get("round_mode", "up") != "up":
            raise ex.unsupported(node, f"round_mode={a['round_mode']!r}")
        ex.emit("Cast", ins, outs, **attrs)
    elif op == "clip":
        ex.emit("Clip", ins, outs)
    elif op == "reshape":
        ex.emit("Reshape", [ins[0], ex.ints(a["shape"], "shape")], outs, allowzero=a["allowzero"])
    elif op in ("squeeze", "unsqueeze"):
        ex.emit(onnx_op_name(op), [ins[0], ex.ints(a["axes"], "axes")], outs)
    elif op == "split":
        ex.emit("Split", [ins[0], ex.ints(a["split"], "split")], outs, axis=a["axis"])
    elif op == "slice":
        extra = [ex.ints(a[k], k) for k in ("starts", "ends", "axes", "steps")]
        ex.emit("Slice", [ins[0], *extra], outs)
    elif op == "pad":
        x = node.inputs[0]
        value = ex.scalar(a["value"], x.dtype.np, "pad_value") if a["mode"] == "constant" else ""
        ex.emit("Pad", [ins[0], ex.ints(a["pads"], "pads"), value], outs, mode=a["mode"])
    elif op == "tile":
        ex.emit("Tile", [ins[0], ex.ints(a["repeats"], "repeats")], outs)
    elif op == "expand":
        ex.emit("Expand", [ins[0], ex.ints(a["shape"], "shape")], outs)
    elif op == "trilu":
        ex.emit("Trilu", [ins[0], ex.scalar(a["k"], np.int64, "k")], outs, upper=a["upper"])
    elif op == "shape":
        end = a["end"] if a["end"] < 2**62 else None
        ex.emit("Shape", ins, outs, start=a["start"], end=end)
    elif op == "topk":
        ex.emit(
            "TopK", [ins[0], ex.ints([a["k"]], "k")], outs, axis=a["axis"], largest=a["largest"], sorted=a["sorted"]
        )
    elif op == "cumsum":
        ex.emit(
            "CumSum",
            [ins[0], ex.scalar(a["axis"], np.int64, "axis")],
            outs,
            exclusive=int(a["exclusive"]),
            reverse=int(a["reverse"]),
        )
    elif op in ("conv", "conv_transpose", "average_pool", "lp_pool", "max_pool"):
        # max_pool with_indices has two outputs, Y and Indices, as ONNX's MaxPool
        ex.emit(onnx_op_name(op), ins, outs, **_direct_attrs(node))
    elif op == "layer_norm":
        attrs = _direct_attrs(node)
        ex.emit("LayerNormalization", ins, outs, **attrs)
    elif op == "quantize_linear":
        ex.emit("QuantizeLinear", ins, outs, axis=a["axis"], block_size=a["block_size"], saturate=int(a["saturate"]))
    elif op == "range":
        dt = a["dtype"].np
        parts = [ex.scalar(a[k], dt, k) for k in ("start", "limit", "delta")]
        ex.emit("Range", parts, outs)
    elif op == "eye_like":
        ex.emit("EyeLike", ins, outs, k=a["k"], dtype=_dtype_to_onnx(a["dtype"]))
    elif op == "one_hot":
        ex.emit("OneHot", [ins[0], ex.scalar(a["depth"], np.int64, "depth"), ins[1]], outs, axis=a["axis"])
    elif op == "constant_of_shape":
        value = helper.make_tensor("value", _dtype_to_onnx(a["dtype"]), [1], [a["value"]])
        ex.emit("ConstantOfShape", [ex.ints(a["shape"], "shape")], outs, value=value)
    elif op == "attention":
        if a["qk_output"] != "none" or a["left_window_size"] >= 0 or a["right_window_size"] >= 0:
            raise ex.unsupported(node, "qk_output and sliding windows have no ONNX Attention-23 form")
        ex.emit(
            "Attention",
            ins,
            outs,
            scale=float(a["scale"]),
            is_causal=int(a["is_causal"]),
            softcap=float(a["softcap"]),
            softmax_precision=_dtype_to_onnx(a["softmax_precision"]),
        )
    else:
        raise ex.unsupported(node, "no export rule for this op")


def run_onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Runs `model` on the CPU provider; returns the outputs in order. Raises whatever
    onnxruntime raises (callers report it as 'oracle unavailable')."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # its kernel errors reach the caller as exceptions
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Graph optimisations fuse and reorder float math; the oracle runs the graph as written.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in inputs.items() if k in names}
    return sess.run(None, feeds)
