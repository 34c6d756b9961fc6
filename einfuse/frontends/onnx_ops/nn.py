"""Converters for the ONNX nn ops (see einfuse/ir/ops/nn.py): MatMul, Gemm, Einsum, Conv,
ConvTranspose, the pools, the normalisations and the softmax family.

Every default is written out, `auto_pad` and ConvTranspose's `output_shape` are resolved
into explicit pads, negative axes are made non-negative, and older opsets are mapped onto
the newest semantics:
- Softmax/LogSoftmax/Hardmax before opset 13 work on x coerced to 2-D around `axis`
  (default 1): emitted as reshape -> op over the flattened tail -> reshape back;
- BatchNormalization before opset 9 may have spatial=0 (per-activation statistics):
  emitted as elementwise ops; training outputs / training_mode=1 are refused;
- GroupNormalization before opset 21 has one scale/bias entry per group: repeated per channel.
"""

from __future__ import annotations

import numpy as np

from einfuse.frontends.onnx import ONNX_TO_DTYPE
from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.nn import canonical_einsum
from einfuse.ir.types import DType

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ---------------------------------------------------------------------------
# helpers


def _requested(node, i: int) -> bool:
    """Does the model use ONNX output i of `node`?"""
    return i < len(node.output) and node.output[i] != ""


def _ints(ctx, node, name: str, n: int, fill: int) -> tuple:
    vals = tuple(ctx.attr(node, name, ()) or ())
    if not vals:
        return (fill,) * n
    if len(vals) != n:
        raise ctx.error(node, f"{name}={vals} should have {n} entries")
    return vals


def _static_kernel(ctx, node, w) -> tuple:
    """kernel_shape from the attribute, else from the weight's spatial dims."""
    if w.rank < 3:
        raise ctx.error(node, f"weight {w.type} must be (M, C, K...) with rank >= 3")
    kernel = tuple(ctx.attr(node, "kernel_shape", ()) or ()) or tuple(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        raise ctx.unsupported(node, f"the kernel shape of weight {w.type} is symbolic")
    return kernel


def _same_pads(ctx, node, x, kernel, strides, dilations, upper: bool) -> tuple:
    """Explicit pads for auto_pad=SAME_*: output size ceil(in / stride), the odd pad at the
    end (UPPER) or the beginning (LOWER)."""
    nd = len(kernel)
    begins, ends = [], []
    for i in range(nd):
        size = x.shape[2 + i]
        effective = dilations[i] * (kernel[i] - 1) + 1
        if strides[i] == 1:
            total = effective - 1  # independent of the input size: symbolic dims are fine
        elif isinstance(size, int):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + effective - size)
        else:
            raise ctx.unsupported(
                node, f"auto_pad with stride {strides[i]} needs static spatial dims, the input is {x.type}"
            )
        begin = total // 2 if upper else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return tuple(begins + ends)


def _window_attrs(ctx, node, x, kernel: tuple) -> dict:
    """kernel_shape, strides, pads (auto_pad resolved) and dilations, all explicit."""
    nd = len(kernel)
    if x.rank != nd + 2:
        raise ctx.error(node, f"input {x.type} should have rank {nd + 2} for a {nd}-D kernel {kernel}")
    strides = _ints(ctx, node, "strides", nd, 1)
    dilations = _ints(ctx, node, "dilations", nd, 1)
    pads = _ints(ctx, node, "pads", 2 * nd, 0)
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise ctx.unsupported(node, f"auto_pad={auto_pad!r}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(ctx, node, x, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = (0,) * (2 * nd)
    return {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations}


def _axis(ctx, node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.error(node, f"axis={axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _stash_type(ctx, node) -> DType:
    code = ctx.attr(node, "stash_type", 1)
    dt = ONNX_TO_DTYPE.get(code)
    if dt is None or not dt.is_float:
        raise ctx.unsupported(node, f"stash_type={code} (only float types)")
    return dt


# ---------------------------------------------------------------------------
# matmul, gemm, einsum


@converter("MatMul")
def matmul(ctx, node):
    return [ctx.op("matmul", [ctx.input(node, 0), ctx.input(node, 1)])]


@converter("Gemm")
def gemm(ctx, node):
    # Opsets 7-10 require C; 11+ make it optional. Older `broadcast` attributes predate opset 7.
    return [
        ctx.op(
            "gemm",
            [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)],
            alpha=float(ctx.attr(node, "alpha", 1.0)),
            beta=float(ctx.attr(node, "beta", 1.0)),
            transA=bool(ctx.attr(node, "transA", 0)),
            transB=bool(ctx.attr(node, "transB", 0)),
        )
    ]


@converter("Einsum")
def einsum(ctx, node):
    inputs = ctx.inputs(node)
    equation = ctx.attr(node, "equation")
    if equation is None:
        raise ctx.error(node, "attribute 'equation' is required")
    try:
        equation = canonical_einsum(equation, len(inputs))
    except ValueError as e:
        raise ctx.error(node, str(e)) from None
    return [ctx.op("einsum", inputs, equation=equation)]


# ---------------------------------------------------------------------------
# conv, conv_transpose


@converter("Conv")
def conv(ctx, node):
    x, w, b = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    attrs = _window_attrs(ctx, node, x, _static_kernel(ctx, node, w))
    return [ctx.op("conv", [x, w, b], group=ctx.attr(node, "group", 1), **attrs)]


@converter("ConvTranspose")
def conv_transpose(ctx, node):
    x, w, b = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    kernel = _static_kernel(ctx, node, w)
    nd = len(kernel)
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise ctx.unsupported(node, f"auto_pad={auto_pad!r}")
    if x.rank != nd + 2:
        raise ctx.error(node, f"input {x.type} should have rank {nd + 2} for a {nd}-D kernel {kernel}")
    strides = _ints(ctx, node, "strides", nd, 1)
    dilations = _ints(ctx, node, "dilations", nd, 1)
    pads = _ints(ctx, node, "pads", 2 * nd, 0)
    output_padding = list(_ints(ctx, node, "output_padding", nd, 0))
    output_shape = tuple(ctx.attr(node, "output_shape", ()) or ())
    if output_shape and len(output_shape) != nd:
        raise ctx.error(node, f"output_shape={output_shape} should have {nd} entries")

    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Pads follow from the wanted output size (ONNX: SAME_UPPER puts the odd pad at the
        # end, anything else at the beginning); SAME without output_shape means in * stride.
        begins, ends = [], []
        for i in range(nd):
            size = x.shape[2 + i]
            full = strides[i] * (size - 1) + output_padding[i] + dilations[i] * (kernel[i] - 1) + 1
            if output_shape:
                if not isinstance(size, int):
                    raise ctx.unsupported(node, f"output_shape needs static spatial dims, the input is {x.type}")
                total = full - output_shape[i]
            else:
                total = full - strides[i] * size  # does not depend on a symbolic size
            total = int(total)
            if total < 0:
                # The wanted output is larger than the full result: the extra end rows get
                # no contribution, which is exactly what more output_padding gives.
                output_padding[i] -= total
                total = 0
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        pads = tuple(begins + ends)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * nd)
    return [
        ctx.op(
            "conv_transpose",
            [x, w, b],
            kernel_shape=kernel,
            strides=strides,
            pads=pads,
            dilations=dilations,
            group=ctx.attr(node, "group", 1),
            output_padding=tuple(output_padding),
        )
    ]


# ---------------------------------------------------------------------------
# pooling


def _pool_attrs(ctx, node, x) -> dict:
    kernel = tuple(ctx.attr(node, "kernel_shape", ()) or ())
    if not kernel:
        raise ctx.error(node, "attribute 'kernel_shape' is required")
    attrs = _window_attrs(ctx, node, x, kernel)
    # ceil_mode (opset 10+) is kept with auto_pad too: onnxruntime honours it for VALID, and
    # for SAME the explicit pads give the same size either way.
    attrs["ceil_mode"] = bool(ctx.attr(node, "ceil_mode", 0))
    return attrs


@converter("MaxPool")
def max_pool(ctx, node):
    x = ctx.input(node, 0)
    attrs = _pool_attrs(ctx, node, x)
    with_indices = _requested(node, 1)
    # Not a flag: 0 is row major, 1 column major (anything else is refused by the inference).
    storage_order = ctx.attr(node, "storage_order", 0)
    out = ctx.op("max_pool", [x], storage_order=storage_order, with_indices=with_indices, **attrs)
    return list(out) if with_indices else [out]


@converter("AveragePool")
def average_pool(ctx, node):
    x = ctx.input(node, 0)
    attrs = _pool_attrs(ctx, node, x)
    return [ctx.op("average_pool", [x], count_include_pad=bool(ctx.attr(node, "count_include_pad", 0)), **attrs)]


@converter("LpPool")
def lp_pool(ctx, node):
    x = ctx.input(node, 0)
    attrs = _pool_attrs(ctx, node, x)
    return [ctx.op("lp_pool", [x], p=int(ctx.attr(node, "p", 2)), **attrs)]


@converter("GlobalAveragePool")
def global_average_pool(ctx, node):
    return [ctx.op("global_average_pool", [ctx.input(node, 0)])]


@converter("GlobalMaxPool")
def global_max_pool(ctx, node):
    return [ctx.op("global_max_pool", [ctx.input(node, 0)])]


@converter("GlobalLpPool")
def global_lp_pool(ctx, node):
    return [ctx.op("global_lp_pool", [ctx.input(node, 0)], p=int(ctx.attr(node, "p", 2)))]


# ---------------------------------------------------------------------------
# normalisations


@converter("BatchNormalization")
def batch_norm(ctx, node):
    if ctx.attr(node, "training_mode", 0) != 0:
        raise ctx.unsupported(node, "training_mode=1 (einfuse compiles inference graphs only)")
    if any(_requested(node, i) for i in range(1, len(node.output))):
        raise ctx.unsupported(node, "the running/saved mean and variance outputs exist only in training mode")
    x, scale, bias, mean, var = (ctx.input(node, i) for i in range(5))
    epsilon = float(ctx.attr(node, "epsilon", 1e-5))
    # spatial=0 with per-channel (rank-1) parameters is the same as spatial=1.
    if ctx.opset < 9 and ctx.attr(node, "spatial", 1) == 0 and scale is not None and scale.rank > 1:
        return [_per_activation_batch_norm(ctx, x, scale, bias, mean, var, epsilon)]
    return [ctx.op("batch_norm", [x, scale, bias, mean, var], epsilon=epsilon)]


def _per_activation_batch_norm(ctx, x, scale, bias, mean, var, epsilon: float):
    """spatial=0 (opsets 7-8): parameters of shape (C, D1, ..., Dn), one per activation.
    y = x * m + (bias - mean * m) with m = scale / sqrt(var + eps); folds when they are constant."""
    for v in (scale, bias, mean, var):
        if v.rank != x.rank - 1:
            raise ctx.error(ctx.node, f"with spatial=0 the parameters should have shape (C, D1, ...), got {v.type}")
    eps = ctx.const(np.asarray(epsilon, dtype=var.dtype.np), "epsilon")
    mult = ctx.op("div", [scale, ctx.op("sqrt", [ctx.op("add", [var, eps])])])
    shift = ctx.op("sub", [bias, ctx.op("mul", [mean, mult])])
    return ctx.op("add", [ctx.op("mul", [x, mult]), shift])


@converter("InstanceNormalization")
def instance_norm(ctx, node):
    inputs = [ctx.input(node, i) for i in range(3)]
    return [ctx.op("instance_norm", inputs, epsilon=float(ctx.attr(node, "epsilon", 1e-5)))]


@converter("LayerNormalization")
def layer_norm(ctx, node):
    x = ctx.input(node, 0)
    with_stats = _requested(node, 1) or _requested(node, 2)
    out = ctx.op(
        "layer_norm",
        [x, ctx.input(node, 1), ctx.input(node, 2)],
        axis=_axis(ctx, node, ctx.attr(node, "axis", -1), x.rank),
        epsilon=float(ctx.attr(node, "epsilon", 1e-5)),
        stash_type=_stash_type(ctx, node),
        with_stats=with_stats,
    )
    return list(out) if with_stats else [out]


@converter("GroupNormalization")
def group_norm(ctx, node):
    x, scale, bias = (ctx.input(node, i) for i in range(3))
    groups = ctx.attr(node, "num_groups")
    if groups is None:
        raise ctx.error(node, "attribute 'num_groups' is required")
    if ctx.opset < 21:
        # GroupNormalization-18: one scale/bias entry per group -> one per channel.
        scale, bias = (_per_group_to_per_channel(ctx, node, x, v, groups) for v in (scale, bias))
    return [
        ctx.op(
            "group_norm",
            [x, scale, bias],
            num_groups=groups,
            epsilon=float(ctx.attr(node, "epsilon", 1e-5)),
            stash_type=_stash_type(ctx, node),
        )
    ]


def _per_group_to_per_channel(ctx, node, x, v, groups: int):
    channels = x.shape[1] if x.rank >= 2 else None
    if not isinstance(channels, int) or groups < 1 or channels % groups:
        raise ctx.unsupported(
            node,
            f"opset-18 GroupNormalization needs a static channel count divisible by num_groups={groups}, the input is {x.type}",
        )
    if v.rank != 1 or v.shape[0] != groups:
        raise ctx.error(node, f"scale and bias should have shape [{groups}] (one per group), got {v.type}")
    repeat = np.repeat(np.arange(groups, dtype=np.int64), channels // groups)
    arr = ctx.graph.const_value(v)
    if arr is not None:
        return ctx.const(np.ascontiguousarray(arr[repeat]), v.name)
    return ctx.op("gather", [v, ctx.const(repeat, "group_index")], axis=0)


@converter("LRN")
def lrn(ctx, node):
    size = ctx.attr(node, "size")
    if size is None:
        raise ctx.error(node, "attribute 'size' is required")
    return [
        ctx.op(
            "lrn",
            [ctx.input(node, 0)],
            size=size,
            alpha=float(ctx.attr(node, "alpha", 1e-4)),
            beta=float(ctx.attr(node, "beta", 0.75)),
            bias=float(ctx.attr(node, "bias", 1.0)),
        )
    ]


@converter("LpNormalization")
def lp_normalization(ctx, node):
    x = ctx.input(node, 0)
    p = int(ctx.attr(node, "p", 2))
    if p not in (1, 2):
        raise ctx.unsupported(node, f"p={p} (ONNX defines p = 1 or 2)")
    axis = _axis(ctx, node, ctx.attr(node, "axis", -1), x.rank)
    return [ctx.op("lp_normalization", [x], axis=axis, p=p)]


@converter("MeanVarianceNormalization")
def mean_variance_normalization(ctx, node):
    x = ctx.input(node, 0)
    axes = tuple(ctx.attr(node, "axes", (0, 2, 3)))
    axes = tuple(sorted(_axis(ctx, node, a, x.rank) for a in axes))
    return [ctx.op("mean_variance_normalization", [x], axes=axes)]


# ---------------------------------------------------------------------------
# softmax family


def _softmax_like(op: str):
    def convert(ctx, node):
        x = ctx.input(node, 0)
        if x.rank == 0:
            raise ctx.error(node, f"input must have rank >= 1, got {x.type}")
        if ctx.opset >= 13:
            return [ctx.op(op, [x], axis=_axis(ctx, node, ctx.attr(node, "axis", -1), x.rank))]
        axis = _axis(ctx, node, ctx.attr(node, "axis", 1), x.rank)
        if axis == x.rank - 1:
            return [ctx.op(op, [x], axis=axis)]
        return [_coerced_2d(ctx, node, op, x, axis)]

    return convert


def _coerced_2d(ctx, node, op: str, x, axis: int):
    """Opset < 13: the op runs over all dims from `axis` on, flattened into one.
    reshape (keep dims before axis, flatten the rest) -> op -> reshape back."""
    tail = x.shape[axis:]
    symbolic = [d for d in tail if not isinstance(d, int)]
    if 0 in tail:  # a literal 0 would mean "copy the input dim" to reshape
        raise ctx.unsupported(node, f"opset-{ctx.opset} {node.op_type} on the empty tensor {x.type}")
    if len(symbolic) > 1:
        raise ctx.unsupported(
            node,
            f"opset-{ctx.opset} {node.op_type} over axis {axis} flattens the dims {list(tail)}, "
            "which needs at most one symbolic dim there (or opset >= 13)",
        )
    # Reshape codes: 0 copies the input dim, -1 is inferred.
    flat = ctx.op("reshape", [x], shape=(0,) * axis + (-1,))
    y = ctx.op(op, [flat], axis=axis)
    back = (0,) * axis + tuple(d if isinstance(d, int) else -1 for d in tail)
    return ctx.op("reshape", [y], shape=back)


converter("Softmax")(_softmax_like("softmax"))
converter("LogSoftmax")(_softmax_like("log_softmax"))
converter("Hardmax")(_softmax_like("hardmax"))
