"""The shape op group (einfuse/ir/ops/shape.py + frontends/onnx_ops/shape.py) against
onnxruntime, its symbolic shape inference, constant folding and its memory guard, its
errors, and the ONNX conformance cases for its ops."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from einfuse.codegen import reference
from einfuse.errors import EinfuseError, ShapeError, UnsafeModelError, UnsupportedOpError
from einfuse.frontends.onnx import DynamicOperandError, convert_model
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType, format_dim, sym
from tests.onnx_helpers import (
    OnnxModel,
    assert_bool_flags,
    case_ids,
    check_conformance_case,
    conformance_cases,
    i64,
    rand,
    run_ort,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)

INT_MAX = np.iinfo(np.int64).max
INT_MIN = np.iinfo(np.int64).min


class Model(OnnxModel):
    default_opset = 18
    tol = uniform_tol(0.0, 0.0)  # data movement: exact unless a test says otherwise


DTYPES = [np.float32, np.int64, np.float16, np.bool_]
NUMERIC = [np.float32, np.int64, np.float16]


# ---------------------------------------------------------------------------
# reshape, flatten, transpose, squeeze, unsqueeze


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, target, allowzero",
    [
        ((2, 3, 4), (4, 6), 0),
        ((2, 3, 4), (-1,), 0),
        ((2, 3, 4), (0, -1), 0),
        ((2, 3, 4), (0, 0, 2, 2), 0),
        ((2, 3, 4), (-1, 2, 3), 0),
        ((0, 3), (3, 0), 1),
        ((0, 3), (3, -1), 0),
        ((1,), (), 0),
    ],
)
def test_reshape(rng, dtype, shape, target, allowzero):
    m = Model("Reshape", [("x", rand(rng, shape, dtype)), ("@s", i64(*target))], allowzero=allowzero)
    m.check()


def test_reshape_resolves_static_targets():
    m = Model("Reshape", [("x", np.zeros((2, 3, 4), np.float32)), ("@s", i64(0, -1))])
    (node,) = m.graph().nodes
    assert node.attrs["shape"] == (2, 12) and node.attrs["allowzero"] == 0


def test_reshape_symbolic_copy_and_infer():
    # 0 copies a symbolic dim; -1 is solved symbolically.
    m = Model(
        "Reshape",
        [("x", np.zeros((2, 128, 384), np.float32)), ("@s", i64(0, 128, 12, 32))],
        input_shapes={"x": ["B", 128, 384]},
    )
    g = m.graph()
    assert str(g.outputs[0].type) == "f32[B,128,12,32]"
    assert g.nodes[0].attrs["shape"] == (0, 128, 12, 32)
    np.testing.assert_array_equal(m.einfuse()[0], m.ort()[0])

    m = Model(
        "Reshape",
        [("x", np.zeros((2, 5, 768), np.float32)), ("@s", i64(0, -1, 12, 64))],
        input_shapes={"x": ["B", "S", 768]},
    )
    assert m.out_types()[0] == "f32[B,S,12,64]"
    m = Model(
        "Reshape",
        [("x", np.zeros((2, 5, 768), np.float32)), ("@s", i64(-1, 768))],
        input_shapes={"x": ["B", "S", 768]},
    )
    assert m.out_types()[0] == "f32[B*S,768]"


def test_reshape_errors():
    m = Model("Reshape", [("x", np.zeros((2, 3), np.float32)), ("@s", i64(4, 2))])
    with pytest.raises(ShapeError, match="cannot reshape 6 elements"):
        m.graph()
    m = Model("Reshape", [("x", np.zeros((2, 3), np.float32)), ("@s", i64(-1, -1))])
    with pytest.raises(ShapeError, match="more than one -1"):
        m.graph()
    m = Model("Reshape", [("x", np.zeros((2, 3), np.float32)), ("s", i64(3, 2))])
    with pytest.raises(DynamicOperandError, match="must be a constant") as info:
        m.graph()
    assert info.value.value_name == "s"
    # Binding the shape input makes it a constant.
    g = m.graph(bind_inputs={"s": i64(3, 2)})
    assert str(g.outputs[0].type) == "f32[3,2]"


@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
@pytest.mark.parametrize("axis", [-3, -1, 0, 1, 2, 3])
def test_flatten(rng, dtype, axis):
    Model("Flatten", [("x", rand(rng, (2, 3, 4), dtype))], axis=axis).check()


def test_flatten_symbolic():
    m = Model("Flatten", [("x", np.zeros((2, 3, 4), np.float32))], axis=2, input_shapes={"x": ["B", "S", 4]})
    assert m.out_types()[0] == "f32[B*S,4]"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("perm", [None, (0, 1, 2), (2, 0, 1), (1, 0, 2), (0, 2, 1)])
def test_transpose(rng, dtype, perm):
    attrs = {} if perm is None else {"perm": perm}
    Model("Transpose", [("x", rand(rng, (2, 3, 4), dtype))], **attrs).check()


def test_transpose_bad_perm():
    m = Model("Transpose", [("x", np.zeros((2, 3), np.float32))], perm=(0, 0))
    with pytest.raises(ShapeError, match="repeat an axis"):
        m.graph()


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axes", [None, (0,), (-1,), (0, 3)])
def test_squeeze(rng, opset, axes):
    x = rand(rng, (1, 3, 2, 1))
    if axes is None:
        m = Model("Squeeze", [("x", x)], opset=opset)
    elif opset < 13:
        m = Model("Squeeze", [("x", x)], opset=opset, axes=axes)
    else:
        m = Model("Squeeze", [("x", x), ("@a", i64(*axes))], opset=opset)
    m.check()


def test_squeeze_errors():
    m = Model("Squeeze", [("x", np.zeros((2, 3), np.float32)), ("@a", i64(0))])
    with pytest.raises(ShapeError, match="size is 2, not 1"):
        m.graph()
    m = Model("Squeeze", [("x", np.zeros((1, 3), np.float32))], input_shapes={"x": ["B", 3]})
    with pytest.raises(UnsupportedOpError, match="static input shape"):
        m.graph()


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [(0,), (-1,), (1, 3), (3, 0), (-1, -4)])
def test_unsqueeze(rng, opset, axes):
    x = rand(rng, (3, 2))
    if opset < 13:
        m = Model("Unsqueeze", [("x", x)], opset=opset, axes=axes)
    else:
        m = Model("Unsqueeze", [("x", x), ("@a", i64(*axes))], opset=opset)
    m.check()


# ---------------------------------------------------------------------------
# concat, split, slice


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(rng, dtype, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] += i
    ops = [(f"x{i}", rand(rng, tuple(s), dtype)) for i, s in enumerate(shapes)]
    Model("Concat", ops, axis=axis).check()


def test_concat_symbolic_and_errors():
    m = Model(
        "Concat",
        [("a", np.zeros((2, 5), np.float32)), ("b", np.zeros((2, 3), np.float32))],
        axis=1,
        input_shapes={"a": ["B", "S"], "b": ["B", 3]},
    )
    assert m.out_types()[0] == "f32[B,S + 3]"
    m = Model("Concat", [("a", np.zeros((2, 5), np.float32)), ("b", np.zeros((3, 3), np.float32))], axis=1)
    with pytest.raises(ShapeError, match="differ in dim 0"):
        m.graph()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize(
    "opset, sizes, n_out, num_outputs",
    [
        (11, None, 3, None),
        (11, (1, 4, 1), 3, None),
        (13, (2, 4), 2, None),
        (13, None, 2, None),
        (18, (1, 5), 2, None),
        (18, None, 4, 4),  # uneven: 2, 2, 2, 0
        (18, None, 3, 3),
        (18, (0, 6), 2, None),
    ],
)
def test_split(rng, dtype, opset, sizes, n_out, num_outputs):
    x = rand(rng, (3, 6), dtype)
    attrs = {"axis": 1}
    ops = [("x", x)]
    if sizes is not None:
        if opset < 13:
            attrs["split"] = sizes
        else:
            ops.append(("@s", i64(*sizes)))
    if num_outputs is not None:
        attrs["num_outputs"] = num_outputs
    Model("Split", ops, opset=opset, outputs=n_out, **attrs).check()


def test_split_uneven_opset18_sizes():
    m = Model("Split", [("x", np.arange(7, dtype=np.float32))], opset=18, outputs=3, num_outputs=3)
    assert [o.shape for o in m.graph().outputs] == [(3,), (3,), (1,)]
    m.check()
    m = Model("Split", [("x", np.arange(7, dtype=np.float32))], opset=13, outputs=3)
    with pytest.raises(ShapeError, match="does not split evenly"):
        m.graph()


SLICES = [
    # starts, ends, axes, steps
    ((0,), (INT_MAX,), (0,), (1,)),
    ((1, 0), (3, -1), (0, 2), (1, 1)),
    ((-2,), (INT_MAX,), (1,), (1,)),
    ((-1,), (INT_MIN,), (1,), (-1,)),
    ((4, 10), (0, -100), (1, 2), (-2, -3)),
    ((0, 1), (100, 5), (-1, -2), (2, 2)),
    ((5,), (1,), (2,), (1,)),  # empty
    ((2,), (-100,), (0,), (-1,)),
    ((0,), (2,), None, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("starts, ends, axes, steps", SLICES)
def test_slice(rng, dtype, starts, ends, axes, steps):
    ops = [("x", rand(rng, (3, 5, 7), dtype)), ("@s", i64(*starts)), ("@e", i64(*ends))]
    if axes is not None:
        ops.append(("@a", i64(*axes)))
    if steps is not None:
        ops.append(("@t", i64(*steps)))
    Model("Slice", ops, opset=13).check()


def test_slice_opset9_attributes(rng):
    x = rand(rng, (3, 5, 7))
    Model("Slice", [("x", x)], opset=9, starts=(1, -3), ends=(INT_MAX, 6), axes=(0, 2)).check()


@pytest.mark.parametrize(
    "starts, ends, steps, want",
    [
        ((0,), (INT_MAX,), (1,), "f32[S,4]"),
        ((0,), (2**31 - 1,), (1,), "f32[S,4]"),
        ((-1,), (INT_MIN,), (-1,), "f32[S,4]"),
        ((1,), (INT_MAX,), (1,), "f32[max(0, S - 1),4]"),
        ((0,), (3,), (1,), "f32[min(3, S),4]"),
        ((0,), (-1,), (1,), "f32[max(0, S - 1),4]"),
    ],
)
def test_slice_symbolic(rng, starts, ends, steps, want):
    x = rand(rng, (6, 4))
    ops = [("x", x), ("@s", i64(*starts)), ("@e", i64(*ends)), ("@a", i64(0)), ("@t", i64(*steps))]
    m = Model("Slice", ops, input_shapes={"x": ["S", 4]})
    assert m.out_types()[0] == want
    np.testing.assert_array_equal(m.einfuse()[0], m.ort()[0])


def test_slice_identity_is_dropped():
    m = Model("Slice", [("x", np.zeros((2, 3), np.float32)), ("@s", i64(0)), ("@e", i64(INT_MAX))], opset=13)
    g = m.graph()
    assert g.nodes == [] and g.outputs[0] is g.inputs[0]


# ---------------------------------------------------------------------------
# gathers and scatters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("idx_shape, idx_dtype", [((), np.int64), ((4,), np.int32), ((2, 3), np.int64)])
def test_gather(rng, dtype, axis, idx_shape, idx_dtype):
    x = rand(rng, (3, 4, 5), dtype)
    n = x.shape[axis]
    idx = rng.integers(-n, n, size=idx_shape).astype(idx_dtype)
    Model("Gather", [("x", x), ("i", idx)], axis=axis).check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(rng, dtype, axis):
    x = rand(rng, (3, 4, 5), dtype)
    idx_shape = [3, 4, 5]
    idx_shape[axis] = 2
    n = x.shape[axis]
    idx = rng.integers(-n, n, size=idx_shape).astype(np.int64)
    Model("GatherElements", [("x", x), ("i", idx)], axis=axis).check()


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize(
    "data_shape, idx_shape, batch_dims",
    [((4, 5, 6), (3, 2), 0), ((4, 5, 6), (2, 3), 0), ((4, 5, 6), (4, 1), 1), ((4, 5, 6), (4, 2, 2), 1)],
)
def test_gather_nd(rng, dtype, data_shape, idx_shape, batch_dims):
    x = rand(rng, data_shape, dtype)
    k = idx_shape[-1]
    dims = data_shape[batch_dims : batch_dims + k]
    idx = np.stack([rng.integers(-d, d, size=idx_shape[:-1]) for d in dims], axis=-1).astype(np.int64)
    Model("GatherND", [("x", x), ("i", idx)], batch_dims=batch_dims).check()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, -1])
def test_scatter_elements(rng, dtype, reduction, axis):
    x = rand(rng, (4, 5), dtype)
    upd_shape = (2, 5) if axis == 0 else (4, 2)
    n = x.shape[axis]
    if reduction == "none":
        # Distinct targets (some written negative): duplicates have no defined winner without a reduction.
        if axis == 0:
            idx = np.stack([rng.permutation(n)[:2] for _ in range(5)], axis=1) - n // 2
        else:
            idx = np.stack([rng.permutation(n)[:2] for _ in range(4)], axis=0) - n // 2
    else:
        idx = rng.integers(-n, n, size=upd_shape)
    m = Model(
        "ScatterElements",
        [("x", x), ("i", idx.astype(np.int64)), ("u", rand(rng, upd_shape, dtype))],
        axis=axis,
        reduction=reduction,
    )
    m.check(rtol=1e-6)


def test_scatter_opset10(rng):
    x = rand(rng, (3, 3))
    idx = np.array([[1, 0, 2], [0, 2, 1]], np.int64)
    Model("Scatter", [("x", x), ("i", idx), ("u", rand(rng, (2, 3)))], opset=10, axis=0).check()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("k", [1, 2])
def test_scatter_nd(rng, dtype, reduction, k):
    x = rand(rng, (4, 3, 2), dtype)
    if reduction == "none":
        flat = rng.permutation(int(np.prod(x.shape[:k])))[:3]
        idx = np.stack(np.unravel_index(flat, x.shape[:k]), axis=-1)
    else:
        idx = np.stack([rng.integers(0, d, size=5) for d in x.shape[:k]], axis=-1)
    upd = rand(rng, idx.shape[:-1] + x.shape[k:], dtype)
    Model("ScatterND", [("x", x), ("i", idx.astype(np.int64)), ("u", upd)], reduction=reduction).check(rtol=1e-6)


# ---------------------------------------------------------------------------
# expand, tile, pad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, target", [((3, 1), (2, 3, 4)), ((3, 1), (1, 1)), ((1,), (5,)), ((2, 1, 4), (3, 1)), ((), (2, 2))]
)
def test_expand(rng, dtype, shape, target):
    Model("Expand", [("x", rand(rng, shape, dtype)), ("@s", i64(*target))]).check()


def test_expand_symbolic():
    m = Model("Expand", [("x", np.zeros((2, 1), np.float32)), ("@s", i64(1, 5))], input_shapes={"x": ["B", 1]})
    assert m.out_types()[0] == "f32[B,5]"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("repeats", [(1, 1), (2, 3), (0, 2), (3, 1)])
def test_tile(rng, dtype, repeats):
    Model("Tile", [("x", rand(rng, (2, 3), dtype)), ("@r", i64(*repeats))]).check()


def test_tile_symbolic():
    m = Model("Tile", [("x", np.zeros((2, 3), np.float32)), ("@r", i64(2, 1))], input_shapes={"x": ["S", 3]})
    assert m.out_types()[0] == "f32[2*S,3]"


PADS = [(0, 1, 2, 0), (1, 0, 0, 2), (2, 2, 2, 2), (-1, 1, 0, -2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", PADS)
def test_pad(rng, dtype, mode, pads):
    x = rand(rng, (3, 4), dtype)
    ops = [("x", x), ("@p", i64(*pads))]
    if mode == "constant":
        ops.append(("@v", np.asarray(7, dtype)))
    Model("Pad", ops, opset=19, mode=mode).check()


def test_pad_axes_opset18(rng):
    x = rand(rng, (2, 3, 4))
    m = Model("Pad", [("x", x), ("@p", i64(1, 2, 0, 3)), ("@v", np.float32(1.5)), ("@a", i64(-1, 0))], opset=18)
    m.check()


def test_pad_opset10_attributes(rng):
    x = rand(rng, (2, 3))
    Model("Pad", [("x", x)], opset=10, pads=(0, 1, 1, 0), value=2.5).check()
    Model("Pad", [("x", x)], opset=10, pads=(1, 1, 1, 1), mode="reflect").check()


def test_pad_symbolic_and_errors():
    m = Model("Pad", [("x", np.zeros((2, 3), np.float32)), ("@p", i64(1, 0, 2, 0))], input_shapes={"x": ["S", 3]})
    assert m.out_types()[0] == "f32[S + 3,3]"
    m = Model("Pad", [("x", np.zeros((2, 3), np.float32)), ("@p", i64(1, 0))])
    with pytest.raises(ShapeError, match="2 \\* rank"):
        m.graph()
    m = Model("Pad", [("x", np.zeros((2, 3), np.float32)), ("@p", i64(0, 0, 0, 0))], mode="mirror")
    with pytest.raises(UnsupportedOpError, match="mirror"):
        m.graph()


# ---------------------------------------------------------------------------
# shape, size and generators


@pytest.mark.parametrize("start, end", [(None, None), (1, None), (-1, None), (0, -1), (1, 2), (-10, 10), (2, 1)])
def test_shape(start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    m = Model("Shape", [("x", np.zeros((2, 3, 4), np.float32))], opset=15, **attrs)
    assert m.graph().nodes == []  # static input: folded to a constant
    m.check()


def test_shape_and_size_symbolic():
    m = Model("Shape", [("x", np.zeros((2, 3, 4), np.float32))], input_shapes={"x": ["B", "S", 4]})
    g = m.graph()
    assert [n.op for n in g.nodes] == ["shape"] and str(g.outputs[0].type) == "i64[3]"
    m.check()
    m = Model("Size", [("x", np.zeros((2, 3, 4), np.float32))], input_shapes={"x": ["B", "S", 4]})
    assert m.out_types()[0] == "i64[]"
    m.check()


@pytest.mark.parametrize("value", [None, np.float32(1.5), np.int64(-3), np.float16(2), np.bool_(True), np.int32(7)])
@pytest.mark.parametrize("shape", [(2, 3), (0,), ()])
def test_constant_of_shape(value, shape):
    attrs = {} if value is None else {"value": nh.from_array(np.asarray([value]))}
    m = Model("ConstantOfShape", [("@s", np.asarray(shape, np.int64))], **attrs)
    g = m.graph()
    assert g.nodes == [] and len(g.constants) == 1
    m.check()


@pytest.mark.parametrize(
    "start, limit, delta, dtype",
    [
        (0, 10, 3, np.int64),
        (10, 4, -2, np.int32),
        (5, 1, 1, np.int64),  # empty
        (0.5, 3.2, 0.7, np.float32),
        (1.0, -2.0, -0.25, np.float64),
    ],
)
def test_range(start, limit, delta, dtype):
    ops = [(f"@{n}", np.asarray(v, dtype)) for n, v in zip("sld", (start, limit, delta))]
    Model("Range", ops).check(rtol=1e-6)


def test_range_from_graph_input_needs_binding():
    m = Model("Range", [("s", np.int64(0)), ("@l", np.int64(5)), ("@d", np.int64(1))])
    with pytest.raises(DynamicOperandError):
        m.graph()


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@pytest.mark.parametrize("k", [0, 1, -1, 3])
def test_eye_like(rng, dtype, k):
    Model("EyeLike", [("x", rand(rng, (3, 4), dtype))], k=k).check()
    Model("EyeLike", [("x", rand(rng, (4, 2), dtype))], k=k, dtype=TensorProto.DOUBLE).check()


@pytest.mark.parametrize("axis", [-1, 0, 1])
# (indices, depth) dtypes among the combinations onnxruntime implements
@pytest.mark.parametrize(
    "idx_dtype, depth_dtype", [(np.int64, np.int64), (np.int32, np.int32), (np.float32, np.float32)]
)
def test_one_hot(rng, axis, idx_dtype, depth_dtype):
    idx = rng.integers(-6, 6, size=(2, 3)).astype(idx_dtype)  # some out of range for depth 5
    values = np.asarray([-1.0, 3.0], np.float32)
    Model("OneHot", [("i", idx), ("@d", depth_dtype(5)), ("v", values)], axis=axis).check()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k, shape", [(None, (4, 5)), (2, (2, 5, 3)), (-1, (4, 5)), (10, (2, 5, 3))])
def test_trilu(rng, dtype, upper, k, shape):
    ops = [("x", rand(rng, shape, dtype))]
    if k is not None:
        ops.append(("@k", np.int64(k)))
    Model("Trilu", ops, upper=upper).check()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(rng, dtype, mode):
    Model("DepthToSpace", [("x", rand(rng, (2, 8, 3, 2), dtype))], blocksize=2, mode=mode).check()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_space_to_depth(rng, dtype):
    Model("SpaceToDepth", [("x", rand(rng, (2, 3, 4, 6), dtype))], blocksize=2).check()


def test_space_to_depth_round_trip_crd(rng):
    # onnxruntime has no CRD SpaceToDepth (opset 28); check it inverts CRD DepthToSpace.
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 6), DType.f32))
    b = Builder(g)
    y = b.op("depth_to_space", [b.op("space_to_depth", [x], blocksize=2, mode="CRD")], blocksize=2, mode="CRD")
    g.outputs = [y]
    data = rand(rng, (1, 2, 4, 6))
    np.testing.assert_array_equal(reference.run(g, {"x": data})["depth_to_space"], data)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("batch_axis, time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(rng, dtype, batch_axis, time_axis):
    x = rand(rng, (4, 5, 2) if time_axis == 0 else (5, 4, 2), dtype)
    lens = rng.integers(1, 5, size=5).astype(np.int64)
    Model("ReverseSequence", [("x", x), ("l", lens)], batch_axis=batch_axis, time_axis=time_axis).check()


# ---------------------------------------------------------------------------
# data-dependent ops


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_nonzero(rng, dtype):
    x = rand(rng, (3, 4), dtype) * (rng.random((3, 4)) < 0.5).astype(dtype)
    m = Model("NonZero", [("x", x)])
    assert m.out_types()[0].startswith("i64[2,_nnz")
    m.check()


def test_nonzero_of_constant_is_folded():
    m = Model("NonZero", [("@x", np.array([[1, 0], [0, 2]], np.float32))])
    g = m.graph()
    assert g.nodes == [] and str(g.outputs[0].type) == "i64[2,2]"
    m.check()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_compress(rng, dtype, axis):
    x = rand(rng, (3, 4), dtype)
    n = 12 if axis is None else x.shape[axis]
    cond = rng.random(n - 1) < 0.5  # shorter than the axis: the rest is dropped
    attrs = {} if axis is None else {"axis": axis}
    Model("Compress", [("x", x), ("c", cond)], **attrs).check()
    # A constant condition gives a static size.
    m = Model("Compress", [("x", x), ("@c", cond)], **attrs)
    assert m.graph().outputs[0].type.is_static
    m.check()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("largest, is_sorted", [(1, 1), (0, 1), (1, 0)])
@pytest.mark.parametrize("axis, k", [(-1, 3), (0, 2), (1, 5)])
def test_topk(rng, dtype, largest, is_sorted, axis, k):
    # Integers give ties: both take the lower index first.
    x = rng.integers(0, 4, size=(4, 5)).astype(dtype) if dtype == np.int64 else rand(rng, (4, 5))
    m = Model("TopK", [("x", x), ("@k", i64(k))], outputs=2, opset=11, axis=axis, largest=largest, sorted=is_sorted)
    if is_sorted:
        m.check()
    else:
        # Unsorted order is unspecified: compare as sets per row.
        got, want = m.einfuse()[0], m.ort()[0]
        np.testing.assert_array_equal(np.sort(got, axis=axis), np.sort(want, axis=axis))


def test_topk_opset9_and_errors(rng):
    Model("TopK", [("x", rand(rng, (3, 6)))], outputs=2, opset=9, k=2).check()
    m = Model("TopK", [("x", rand(rng, (3, 6))), ("@k", i64(7))], outputs=2, opset=11)
    with pytest.raises(ShapeError, match="k 7 is larger"):
        m.graph()


# ---------------------------------------------------------------------------
# resize and upsample

COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("coord", COORDS + ["tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 3), (1, 1, 0.5, 0.7), (1, 1, 1.7, 0.6)])
def test_resize_nearest(rng, coord, nearest_mode, scales):
    x = rand(rng, (1, 2, 5, 6))
    m = Model(
        "Resize",
        [("x", x), None, ("@s", np.asarray(scales, np.float32))],
        opset=19,
        mode="nearest",
        coordinate_transformation_mode=coord,
        nearest_mode=nearest_mode,
    )
    fractional = any(float(np.float32(s)) * d % 1 for s, d in zip(scales, x.shape))
    if coord == "align_corners" and fractional:
        # The spec's length_resized is scale * length (fractional here), as in the ONNX
        # reference; onnxruntime uses the rounded output size instead.
        m.check(against="onnx-reference")
    else:
        m.check()


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.float16])
def test_resize_nearest_other_dtypes(rng, dtype):
    x = rand(rng, (1, 1, 3, 4), dtype)
    m = Model("Resize", [("x", x), None, None, ("@z", i64(1, 1, 7, 2))], opset=19, mode="nearest")
    if dtype == np.bool_:
        # onnxruntime has no bool Resize: nearest picks the same elements as for uint8.
        as_u8 = Model("Resize", [("x", x.astype(np.uint8)), None, None, ("@z", i64(1, 1, 7, 2))], opset=19)
        np.testing.assert_array_equal(m.einfuse()[0], as_u8.ort()[0].astype(bool))
    else:
        m.check()


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("sizes", [(1, 2, 8, 9), (1, 2, 3, 2), (1, 2, 1, 7)])
def test_resize_interpolate_sizes(rng, mode, coord, sizes):
    x = rand(rng, (1, 2, 5, 4))
    m = Model(
        "Resize",
        [("x", x), None, None, ("@z", i64(*sizes))],
        opset=19,
        mode=mode,
        coordinate_transformation_mode=coord,
    )
    m.check(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", ["half_pixel", "asymmetric", "pytorch_half_pixel"])
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 1.5), (1, 1, 0.5, 0.75)])
def test_resize_interpolate_scales(rng, mode, coord, scales):
    x = rand(rng, (2, 3, 8, 8))
    m = Model(
        "Resize",
        [("x", x), None, ("@s", np.asarray(scales, np.float32))],
        opset=13,
        mode=mode,
        coordinate_transformation_mode=coord,
    )
    m.check(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [(1, 1, 3, 5), (1, 1, 6, 2), (1, 1, 12, 12)])
def test_resize_antialias(rng, mode, sizes):
    x = rand(rng, (1, 1, 8, 8))
    m = Model("Resize", [("x", x), None, None, ("@z", i64(*sizes))], opset=18, mode=mode, antialias=1)
    m.check(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a, exclude", [(-0.5, 1), (-0.75, 1), (-0.5, 0)])
def test_resize_cubic_options(rng, a, exclude):
    x = rand(rng, (1, 1, 6, 6))
    m = Model(
        "Resize",
        [("x", x), None, ("@s", np.asarray((1, 1, 1.5, 0.8), np.float32))],
        opset=13,
        mode="cubic",
        cubic_coeff_a=a,
        exclude_outside=exclude,
    )
    m.check(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(rng, mode):
    x = rand(rng, (1, 1, 6, 6))
    roi = np.asarray([0, 0, 0.2, -0.3, 1, 1, 0.9, 1.4], np.float32)  # part of it outside: extrapolated
    m = Model(
        "Resize",
        [("x", x), ("@r", roi), None, ("@z", i64(1, 1, 4, 5))],
        opset=13,
        mode=mode,
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-7.0,
    )
    m.check(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_axes_and_aspect_policy(rng, policy):
    x = rand(rng, (2, 3, 4, 6))
    m = Model(
        "Resize",
        [("x", x), None, None, ("@z", i64(6, 5))],
        opset=19,
        mode="nearest",
        axes=(3, 2),
        keep_aspect_ratio_policy=policy,
    )
    m.check()


def test_resize_opset11_linear_and_opset10(rng):
    x = rand(rng, (1, 2, 4, 4))
    empty = np.zeros(0, np.float32)
    m = Model(
        "Resize",
        [("x", x), ("@r", empty), ("@s", np.asarray((1, 1, 2, 1.5), np.float32))],
        opset=11,
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )
    m.check(rtol=1e-5, atol=1e-6)
    for scales in [(1, 1, 2, 3), (1, 1, 0.5, 0.6)]:
        m = Model("Resize", [("x", x), ("@s", np.asarray(scales, np.float32))], opset=10, mode="nearest")
        m.check()
    m = Model("Resize", [("x", x), ("@s", np.asarray((1, 1, 2, 2), np.float32))], opset=10, mode="linear")
    m.check(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample(rng, opset, mode):
    x = rand(rng, (1, 2, 3, 4))
    scales = (1.0, 1.0, 2.0, 1.5)
    if opset < 9:
        m = Model("Upsample", [("x", x)], opset=opset, mode=mode, scales=scales)
    else:
        m = Model("Upsample", [("x", x), ("@s", np.asarray(scales, np.float32))], opset=opset, mode=mode)
    m.check(rtol=1e-5, atol=1e-6)


def test_resize_symbolic_and_errors():
    x = np.zeros((1, 3, 4, 4), np.float32)
    scales = ("@s", np.asarray((1, 1, 2, 0.5), np.float32))
    m = Model("Resize", [("x", x), None, scales], opset=13, input_shapes={"x": ["B", 3, "H", "W"]})
    assert m.out_types()[0] == "f32[B,3,2*H,floor((1/2)*W)]"
    m = Model("Resize", [("x", x), None, scales], opset=13, mode="bicubic")
    with pytest.raises(UnsupportedOpError, match="bicubic"):
        m.graph()
    m = Model("Resize", [("x", x.astype(np.int64)), None, scales], opset=13, mode="linear")
    with pytest.raises(UnsupportedOpError, match="linear resize of i64"):
        m.graph()
    both = [("x", x), None, scales, ("@z", i64(1, 3, 8, 2))]
    with pytest.raises(ShapeError, match="exactly one of scales and sizes"):
        Model("Resize", both, opset=13).graph()
    m = Model("Resize", [("x", x), ("@s", np.asarray((1, 1, 2, 0.5), np.float32))], opset=10, mode="nearest")
    with pytest.raises(UnsupportedOpError, match="both up- and downsamples"):
        m.graph()


# ---------------------------------------------------------------------------
# Constant


@pytest.mark.parametrize(
    "attr, value, want",
    [
        ("value", nh.from_array(np.arange(6, dtype=np.float16).reshape(2, 3)), np.arange(6, dtype=np.float16)),
        ("value_float", 2.5, np.float32(2.5)),
        ("value_floats", [1.0, 2.0], np.asarray([1, 2], np.float32)),
        ("value_int", -4, np.int64(-4)),
        ("value_ints", [3, 4, 5], i64(3, 4, 5)),
    ],
)
def test_constant(attr, value, want):
    node = oh.make_node("Constant", [], ["y"], **{attr: value})
    graph = oh.make_graph([node], "g", [], [oh.make_empty_tensor_value_info("y")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    out = reference.run(convert_model(model), {})["y"]
    want = np.asarray(want)
    assert out.dtype == want.dtype
    np.testing.assert_array_equal(out.reshape(-1), want.reshape(-1))
    if attr != "value":
        assert out.shape == want.shape


def test_constant_string_is_unsupported():
    node = oh.make_node("Constant", [], ["y"], value_string="hi")
    graph = oh.make_graph([node], "g", [], [oh.make_empty_tensor_value_info("y")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    with pytest.raises(UnsupportedOpError, match="string"):
        convert_model(model)


FLAG_CASES = [
    # (ONNX op, operands, other attributes, flags as ONNX writes them)
    ("Reshape", [("x", np.ones((0, 3), np.float32)), ("@s", i64(3, 0))], {"opset": 14}, {"allowzero": 1}),
    ("Trilu", [("x", np.ones((3, 4), np.float32))], {"opset": 14}, {"upper": 0}),
    ("TopK", [("x", np.ones((3, 5), np.float32)), ("@k", i64(2))], {"opset": 11}, {"largest": 0, "sorted": 0}),
    (
        "Resize",
        [("x", np.ones((1, 1, 4, 4), np.float32)), None, ("@s", np.asarray((1, 1, 0.5, 0.5), np.float32))],
        {"opset": 18, "mode": "linear"},
        {"antialias": 1, "exclude_outside": 1},
    ),
]


@pytest.mark.parametrize("op, operands, attrs, flags", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flags_are_bool_attributes(op, operands, attrs, flags):
    assert_bool_flags(Model(op, operands, **attrs, **flags), flags)


# ---------------------------------------------------------------------------
# folding of shape computations


def _shape_chain_model(scalar_index: bool) -> onnx.ModelProto:
    """x f32[2,3,4] -> Shape -> Gather(0) -> Concat(.., [-1]) -> Reshape: the usual exporter
    pattern for 'keep the batch, flatten the rest'."""
    if scalar_index:
        gather_idx = nh.from_array(np.int64(0), "idx")
        nodes = [
            oh.make_node("Shape", ["x"], ["shp"]),
            oh.make_node("Gather", ["shp", "idx"], ["b"], axis=0),
            oh.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
            oh.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
            oh.make_node("Reshape", ["x", "target"], ["y"]),
        ]
        inits = [gather_idx, nh.from_array(i64(0), "ax"), nh.from_array(i64(-1), "minus1")]
    else:
        nodes = [
            oh.make_node("Shape", ["x"], ["shp"]),
            oh.make_node("Gather", ["shp", "idx"], ["b1"], axis=0),
            oh.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
            oh.make_node("Reshape", ["x", "target"], ["y"]),
        ]
        inits = [nh.from_array(i64(0), "idx"), nh.from_array(i64(-1), "minus1")]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [oh.make_empty_tensor_value_info("y")],
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


@pytest.mark.parametrize("scalar_index", [False, True])
def test_shape_gather_concat_reshape_folds(rng, scalar_index):
    model = _shape_chain_model(scalar_index)
    g = convert_model(model)
    assert [n.op for n in g.nodes] == ["reshape"]
    assert g.nodes[0].attrs["shape"] == (2, 12)
    assert g.constants == {}
    x = rand(rng, (2, 3, 4))
    np.testing.assert_array_equal(reference.run(g, {"x": x})["y"], x.reshape(2, 12))


def _dynamic_chain_model(target_nodes, inits, x_shape) -> onnx.ModelProto:
    graph = oh.make_graph(
        [oh.make_node("Shape", ["x"], ["shp"]), *target_nodes, oh.make_node("Reshape", ["x", "target"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [oh.make_empty_tensor_value_info("y")],
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def test_reshape_target_computed_from_symbolic_shape(rng):
    # batch kept, the rest flattened: Gather(shape, 0) -> Unsqueeze -> Concat([b, -1])
    model = _dynamic_chain_model(
        [
            oh.make_node("Gather", ["shp", "idx"], ["b"], axis=0),
            oh.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
            oh.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        ],
        [nh.from_array(np.int64(0), "idx"), nh.from_array(i64(0), "ax"), nh.from_array(i64(-1), "minus1")],
        ["B", "S", 4],
    )
    g = convert_model(model)
    reshape_node = g.nodes[-1]
    assert reshape_node.op == "reshape" and reshape_node.attrs["shape"] == (0, -1)
    assert str(g.outputs[0].type) == "f32[B,4*S]"
    x = rand(rng, (2, 3, 4))
    np.testing.assert_array_equal(reference.run(g, {"x": x})["y"], run_ort(model, {"x": x})[0])

    # heads split: Slice(shape, 0:2) -> Concat([., 2, 2])
    model = _dynamic_chain_model(
        [
            oh.make_node("Slice", ["shp", "s", "e"], ["lead"]),
            oh.make_node("Concat", ["lead", "heads"], ["target"], axis=0),
        ],
        [nh.from_array(i64(0), "s"), nh.from_array(i64(2), "e"), nh.from_array(i64(2, 2), "heads")],
        ["B", "S", 4],
    )
    g = convert_model(model)
    assert g.nodes[-1].attrs["shape"] == (0, 0, 2, 2) and str(g.outputs[0].type) == "f32[B,S,2,2]"


def test_reshape_target_from_symbolic_shape_not_expressible():
    # (S, B, 4) from an input [B, S, 4]: two dims neither copied nor inferable.
    model = _dynamic_chain_model(
        [oh.make_node("Gather", ["shp", "perm"], ["target"], axis=0)],
        [nh.from_array(i64(1, 0, 2), "perm")],
        ["B", "S", 4],
    )
    with pytest.raises(UnsupportedOpError, match="computed at run time"):
        convert_model(model)


# ---------------------------------------------------------------------------
# the memory guard: folded constants are sized from the inferred type, before allocation


def _const_model(nodes, inits, output="y", opset=18) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [], [oh.make_empty_tensor_value_info(output)], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return model


HOSTILE = {
    "constant_of_shape": _const_model(
        [oh.make_node("ConstantOfShape", ["s"], ["y"])], [nh.from_array(i64(1 << 20, 1 << 20), "s")]
    ),
    "constant_of_shape_overflowing_int64": _const_model(
        [oh.make_node("ConstantOfShape", ["s"], ["y"])], [nh.from_array(i64(1 << 40, 1 << 40, 1 << 40), "s")]
    ),
    "range_int": _const_model(
        [oh.make_node("Range", ["a", "b", "c"], ["y"])],
        [nh.from_array(np.int64(v), n) for n, v in zip("abc", (0, 10**12, 1))],
    ),
    "range_float": _const_model(
        [oh.make_node("Range", ["a", "b", "c"], ["y"])],
        [nh.from_array(np.float32(v), n) for n, v in zip("abc", (0, 1e12, 0.5))],
    ),
    "expand": _const_model(
        [oh.make_node("Expand", ["x", "s"], ["y"])],
        [nh.from_array(np.ones((1, 1), np.float32), "x"), nh.from_array(i64(1 << 20, 1 << 20), "s")],
    ),
    "tile": _const_model(
        [oh.make_node("Tile", ["x", "r"], ["y"])],
        [nh.from_array(np.ones((2, 2), np.float32), "x"), nh.from_array(i64(1 << 19, 1 << 19), "r")],
    ),
    "pad": _const_model(
        [oh.make_node("Pad", ["x", "p"], ["y"])],
        [nh.from_array(np.ones((2, 2), np.float32), "x"), nh.from_array(i64(0, 0, 1 << 20, 1 << 20), "p")],
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_huge_folded_constants_are_refused_before_allocating(name):
    start = time.perf_counter()
    with pytest.raises(UnsafeModelError, match="over the limit"):
        convert_model(HOSTILE[name])
    assert time.perf_counter() - start < 2.0


def test_max_const_bytes_lowers_the_limit():
    model = _const_model([oh.make_node("ConstantOfShape", ["s"], ["y"])], [nh.from_array(i64(512, 1024), "s")])
    g = convert_model(model)  # 2 MiB: fine by default
    assert g.constants[g.outputs[0].name][1].shape == (512, 1024)
    with pytest.raises(UnsafeModelError, match="limit of 1048576 bytes"):
        convert_model(model, max_const_bytes=1 << 20)
    model = _const_model(
        [oh.make_node("Range", ["a", "b", "c"], ["y"])],
        [nh.from_array(np.int64(v), n) for n, v in zip("abc", (0, 1000, 1))],
    )
    convert_model(model, max_const_bytes=8000)
    with pytest.raises(UnsafeModelError):
        convert_model(model, max_const_bytes=7999)


# ---------------------------------------------------------------------------
# inference through the builder (no ONNX)


def test_builder_inference_errors():
    g = Graph("t")
    x = g.add_input("x", TensorType((sym("B"), 4), DType.f32))
    b = Builder(g)
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        b.op("gather", [x, g.add_constant("i", i64(0))], axis=2)
    with pytest.raises(ShapeError, match="do not add up"):
        b.op("split", [x], axis=1, split=(1, 2))
    with pytest.raises(ShapeError, match="needs a float tensor"):
        b.op("resize", [g.add_input("n", TensorType((2, 2), DType.i64))], mode="linear", scales=(2.0, 2.0))
    with pytest.raises(ShapeError, match="delta"):
        b.op("range", [], start=0, limit=4, delta=0, dtype=DType.i64)
    y = b.op("split", [x], axis=1, split=(1, 3))
    assert [format_dim(o.shape[0]) for o in y] == ["B", "B"]
    t = b.op("topk", [x], k=2, axis=1)
    assert [str(o.type) for o in t] == ["f32[B,2]", "i64[B,2]"]


# ---------------------------------------------------------------------------
# ONNX conformance cases

_CASE_OPS = {
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "ScatterElements", "ScatterND", "Scatter", "Expand", "Tile", "Pad", "Shape",
    "Size", "ConstantOfShape", "Range", "OneHot", "Trilu", "DepthToSpace", "SpaceToDepth", "Resize", "Upsample",
    "NonZero", "TopK", "EyeLike", "Compress", "ReverseSequence", "Constant",
}  # fmt: skip
CASES = conformance_cases(_CASE_OPS)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_conformance(case):
    check_conformance_case(case)


def test_conformance_cases_were_found():
    assert len(CASES) > 200
    assert {c.model.graph.node[0].op_type for c in CASES} == _CASE_OPS


def test_unsupported_variants_raise_clean_errors():
    # Antialiased nearest is a no-op per spec, unknown modes are refused, never guessed.
    x = np.zeros((1, 1, 4, 4), np.float32)
    for attrs in ({"coordinate_transformation_mode": "crop"}, {"nearest_mode": "banker"}):
        m = Model("Resize", [("x", x), None, ("@s", np.asarray((1, 1, 2, 2), np.float32))], opset=13, **attrs)
        with pytest.raises(EinfuseError):
            m.graph()
