"""The nn op group (einfuse/ir/ops/nn.py + frontends/onnx_ops/nn.py) against onnxruntime,
its symbolic shape inference, its errors, and the ONNX conformance cases for its ops."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from einfuse.codegen import reference
from einfuse.errors import ShapeError, UnsupportedOpError
from einfuse.ir.ops import get_op
from einfuse.ir.types import DType, sym
from tests.onnx_helpers import (
    OnnxModel,
    assert_bool_flags,
    case_ids,
    check_conformance_case,
    conformance_cases,
    rand,
    seeded_rng,  # noqa: F401 (the rng fixture)
    tolerances,
)


class Model(OnnxModel):
    default_opset = 22
    # (rtol, atol) per result dtype: f16 results are rounded to 11 bits and ORT may accumulate differently.
    tol = tolerances(f16=(1e-2, 1e-2), f32=(1e-4, 1e-5), f64=(1e-10, 1e-12))


FLOATS = [np.float32, np.float16]


# ---------------------------------------------------------------------------
# matmul, gemm, einsum


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 6)), ((2, 3, 4), (4, 5))],
)
def test_matmul(rng, dtype, a_shape, b_shape):
    Model("MatMul", [("a", rand(rng, a_shape, dtype=dtype)), ("b", rand(rng, b_shape, dtype=dtype))]).check()


def test_matmul_int64(rng):
    a = rng.integers(-5, 5, (2, 3, 4)).astype(np.int64)
    b = rng.integers(-5, 5, (4, 2)).astype(np.int64)
    Model("MatMul", [("a", a), ("b", b)], opset=13).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm(rng, dtype, trans, c_shape):
    ta, tb = trans
    a = rand(rng, (4, 3) if ta else (3, 4), dtype=dtype)
    b = rand(rng, (5, 4) if tb else (4, 5), dtype=dtype)
    c = None if c_shape is None else ("@c", rand(rng, c_shape, dtype=dtype))
    Model("Gemm", [("a", a), ("@b", b), c], opset=13, alpha=0.5, beta=2.0, transA=ta, transB=tb).check()


def test_gemm_opset7_requires_c(rng):
    a, b, c = rand(rng, (3, 4)), rand(rng, (4, 5)), rand(rng, (5,))
    Model("Gemm", [("a", a), ("b", b), ("c", c)], opset=7, beta=0.0).check()


@pytest.mark.parametrize(
    "equation,shapes",
    [
        ("ij,jk->ik", [(3, 4), (4, 5)]),
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
        ("ij->ji", [(3, 4)]),
        ("ii->i", [(4, 4)]),
        ("ij->", [(3, 4)]),
        ("i,i", [(5,), (5,)]),
        ("ij,jk", [(3, 4), (4, 5)]),
        ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)]),
        ("bhqd, bhkd -> bhqk", [(2, 3, 4, 8), (2, 3, 5, 8)]),
        ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ],
)
@pytest.mark.parametrize("dtype", FLOATS)
def test_einsum(rng, equation, shapes, dtype):
    operands = [(f"x{i}", rand(rng, s, dtype=dtype)) for i, s in enumerate(shapes)]
    Model("Einsum", operands, opset=12, equation=equation).check()


# ---------------------------------------------------------------------------
# conv, conv_transpose

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((2, 3, 7, 8), (4, 3, 3, 3), {}),
    ((1, 3, 9, 9), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((1, 4, 8, 9), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    ((2, 6, 7, 7), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),  # depthwise
    ((1, 4, 7, 7), (8, 1, 3, 3), {"group": 4, "strides": [2, 2]}),  # depthwise, channel multiplier 2
    ((1, 8, 5, 6), (16, 8, 1, 1), {}),  # pointwise
    ((2, 3, 11), (5, 3, 3), {"strides": [2], "pads": [2, 1], "dilations": [2]}),  # 1-D
    ((1, 2, 5, 6, 7), (4, 2, 3, 2, 3), {"strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1]}),  # 3-D
    ((1, 4, 6, 5, 5), (4, 2, 2, 2, 2), {"group": 2, "dilations": [2, 1, 2]}),  # 3-D grouped
    ((1, 3, 9, 8), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 9, 8), (4, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 3, 9, 8), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((1, 3, 9, 8), (4, 3, 3, 3), {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0]}),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES)
def test_conv(rng, dtype, bias, x_shape, w_shape, attrs):
    operands = [("x", rand(rng, x_shape, dtype=dtype)), ("@w", rand(rng, w_shape, dtype=dtype))]
    if bias:
        operands.append(("@b", rand(rng, (w_shape[0],), dtype=dtype)))
    Model("Conv", operands, **attrs).check()


def test_conv_same_pads_use_the_dilated_kernel(rng):
    # onnxruntime refuses SAME with dilations; ONNX pads so that the output is ceil(in / stride)
    # for the dilated kernel: here 4 rows in total, split evenly.
    x, w = rand(rng, (1, 3, 9, 8)), rand(rng, (4, 3, 3, 3))
    same = Model("Conv", [("x", x), ("@w", w)], auto_pad="SAME_UPPER", dilations=[2, 2])
    assert same.graph().nodes[0].attrs["pads"] == (2, 2, 2, 2)
    explicit = Model("Conv", [("x", x), ("@w", w)], pads=[2, 2, 2, 2], dilations=[2, 2])
    np.testing.assert_allclose(same.einfuse()[0], explicit.ort()[0], rtol=1e-4, atol=1e-5)


def test_conv_weight_as_input_and_old_opset(rng):
    x, w = rand(rng, (1, 2, 6, 6)), rand(rng, (3, 2, 3, 3))
    Model("Conv", [("x", x), ("w", w)], opset=7, pads=[1, 1, 1, 1]).check()


CONV_T_CASES = [
    ((1, 3, 4, 5), (3, 2, 3, 3), {}),
    ((2, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 4, 3, 5), (4, 2, 2, 3), {"group": 2, "strides": [3, 2], "dilations": [2, 1], "pads": [0, 1, 2, 0]}),
    ((1, 4, 5, 5), (4, 1, 3, 3), {"group": 4, "strides": [2, 2]}),  # depthwise
    ((1, 2, 7), (2, 3, 4), {"strides": [3], "output_padding": [2]}),  # 1-D
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]}),  # 3-D
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 9]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_T_CASES)
def test_conv_transpose(rng, dtype, bias, x_shape, w_shape, attrs):
    operands = [("x", rand(rng, x_shape, dtype=dtype)), ("@w", rand(rng, w_shape, dtype=dtype))]
    if bias:
        operands.append(("@b", rand(rng, (w_shape[1] * attrs.get("group", 1),), dtype=dtype)))
    Model("ConvTranspose", operands, **attrs).check()


def test_conv_transpose_same_pads_follow_the_onnx_spec(rng):
    # ONNX: total padding = stride*(in-1) + dilated kernel - in*stride; SAME_UPPER puts the odd
    # pad at the end. (onnxruntime places it differently; the conformance case agrees with us.)
    x, w = rand(rng, (1, 1, 3, 3)), rand(rng, (1, 1, 4, 4))
    g = Model("ConvTranspose", [("x", x), ("@w", w)], auto_pad="SAME_UPPER", strides=[2, 2]).graph()
    (node,) = g.nodes
    assert node.attrs["pads"] == (1, 1, 1, 1)
    g = Model("ConvTranspose", [("x", x), ("@w", w)], auto_pad="SAME_UPPER", strides=[3, 3]).graph()
    assert g.nodes[0].attrs["pads"] == (0, 0, 1, 1)
    assert g.outputs[0].shape == (1, 1, 9, 9)


def test_conv_resnet_stem_is_fast(rng):
    # Guard against per-pixel Python loops: a ResNet-50 stem conv (118 MFLOP) must take well
    # under a second with the im2col + BLAS path.
    import time

    x, w = rand(rng, (1, 3, 224, 224)), rand(rng, (64, 3, 7, 7))
    conv = get_op("conv").reference
    start = time.perf_counter()
    y = conv(x, w, kernel_shape=(7, 7), strides=(2, 2), pads=(3, 3, 3, 3), dilations=(1, 1), group=1)
    assert y.shape == (1, 64, 112, 112)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------
# pooling

POOL_CASES = [
    # (x shape, attrs)
    ((2, 3, 8, 9), {"kernel_shape": [2, 2]}),
    ((1, 2, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 0]}),
    ((1, 2, 8, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 2, 9, 10), {"kernel_shape": [2, 3], "dilations": [2, 2], "strides": [1, 2]}),
    ((1, 2, 10, 10), {"kernel_shape": [2, 2], "dilations": [2, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((2, 3, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),  # 1-D
    ((1, 2, 5, 6, 7), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [0, 1, 0, 1, 1, 1]}),  # 3-D
    ((1, 2, 9, 8), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 9, 8), {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 2, 9, 8), {"kernel_shape": [3, 2], "auto_pad": "VALID", "strides": [2, 2], "ceil_mode": 1}),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("x_shape,attrs", POOL_CASES)
def test_max_pool(rng, dtype, x_shape, attrs):
    Model("MaxPool", [("x", rand(rng, x_shape, dtype=dtype))], **attrs).check()


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("x_shape,attrs", [POOL_CASES[i] for i in (1, 2, 4, 6, 7, 8)])
def test_max_pool_indices(rng, storage_order, x_shape, attrs):
    # Distinct values: ties would make the argmax ambiguous.
    x = rng.permutation(np.prod(x_shape)).reshape(x_shape).astype(np.float32)
    _, idx = Model("MaxPool", [("x", x)], outputs=2, storage_order=storage_order, **attrs).check()
    assert idx.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_integers(rng, dtype):
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (1, 2, 6, 7)).astype(dtype)
    Model("MaxPool", [("x", x)], opset=12, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("x_shape,attrs", POOL_CASES)
def test_average_pool(rng, dtype, count_include_pad, x_shape, attrs):
    x = rand(rng, x_shape, dtype=dtype)
    Model("AveragePool", [("x", x)], count_include_pad=count_include_pad, **attrs).check()


def test_average_pool_opset7(rng):
    x = rand(rng, (1, 2, 7, 7))
    Model("AveragePool", [("x", x)], opset=7, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1).check()


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("x_shape,attrs", [POOL_CASES[0], POOL_CASES[1], POOL_CASES[3], POOL_CASES[5], POOL_CASES[8]])
def test_lp_pool(rng, p, x_shape, attrs):
    Model("LpPool", [("x", rand(rng, x_shape))], opset=18, p=p, **attrs).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
@pytest.mark.parametrize("x_shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_global_pools(rng, dtype, op, x_shape):
    # onnxruntime has no GlobalLpPool-22 kernel; GlobalLpPool-2 is the same op.
    attrs, opset = ({"p": 3}, 13) if op == "GlobalLpPool" else ({}, 22)
    Model(op, [("x", rand(rng, x_shape, dtype=dtype))], opset=opset, **attrs).check()


# ---------------------------------------------------------------------------
# normalisations


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("x_shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_batch_norm(rng, dtype, x_shape):
    c = x_shape[1]
    params = [rand(rng, (c,), dtype=dtype) for _ in range(3)] + [rand(rng, (c,), dtype=dtype, lo=0.5, hi=2.0)]
    operands = [("x", rand(rng, x_shape, dtype=dtype))] + [(f"@{n}", p) for n, p in zip("sbmv", params)]
    Model("BatchNormalization", operands, opset=15, epsilon=1e-3).check()


def test_batch_norm_f16_input_with_f32_params(rng):
    params = [rand(rng, (3,)) for _ in range(3)] + [rand(rng, (3,), lo=0.5, hi=2.0)]
    operands = [("x", rand(rng, (2, 3, 4), dtype=np.float16))] + [(f"@{n}", p) for n, p in zip("sbmv", params)]
    Model("BatchNormalization", operands, opset=15).check()


@pytest.mark.parametrize("opset", [7, 9])
def test_batch_norm_old_opsets(rng, opset):
    params = [rand(rng, (3,)) for _ in range(3)] + [rand(rng, (3,), lo=0.5, hi=2.0)]
    operands = [("x", rand(rng, (2, 3, 4, 4)))] + [(f"@{n}", p) for n, p in zip("sbmv", params)]
    Model("BatchNormalization", operands, opset=opset).check()


def test_batch_norm_opset7_per_activation(rng):
    # spatial=0: statistics per activation, parameters of shape (C, H, W).
    params = [rand(rng, (3, 4, 4)) for _ in range(3)] + [rand(rng, (3, 4, 4), lo=0.5, hi=2.0)]
    operands = [("x", rand(rng, (2, 3, 4, 4)))] + [(f"@{n}", p) for n, p in zip("sbmv", params)]
    Model("BatchNormalization", operands, opset=7, spatial=0).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("x_shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_instance_norm(rng, dtype, x_shape):
    c = x_shape[1]
    operands = [
        ("x", rand(rng, x_shape, dtype=dtype)),
        ("@s", rand(rng, (c,), dtype=dtype)),
        ("@b", rand(rng, (c,), dtype=dtype)),
    ]
    Model("InstanceNormalization", operands, epsilon=1e-4).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("stats", [False, True])
def test_layer_norm(rng, dtype, axis, stats):
    x_shape = (2, 3, 8)
    norm_shape = x_shape[axis:]
    operands = [("x", rand(rng, x_shape, dtype=dtype)), ("@s", rand(rng, norm_shape, dtype=dtype))]
    operands.append(("@b", rand(rng, norm_shape, dtype=dtype)))
    m = Model("LayerNormalization", operands, opset=17, outputs=3 if stats else 1, axis=axis, epsilon=1e-3)
    got = m.check()
    if stats:
        # Mean and InvStdDev are in the stash type (f32) with the normalised dims kept as 1.
        assert got[1].dtype == np.float32 and got[1].shape == x_shape[: axis % 3] + (1,) * (3 - axis % 3)


def test_layer_norm_without_bias_and_broadcast_scale(rng):
    x = rand(rng, (2, 3, 8))
    Model("LayerNormalization", [("x", x), ("@s", rand(rng, (1, 8)))], opset=17, axis=1).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm(rng, dtype, opset, groups):
    c = 6
    n_params = c if opset >= 21 else groups
    operands = [("x", rand(rng, (2, c, 3, 4), dtype=dtype))]
    operands += [("@s", rand(rng, (n_params,), dtype=dtype)), ("@b", rand(rng, (n_params,), dtype=dtype))]
    Model("GroupNormalization", operands, opset=opset, num_groups=groups, epsilon=1e-3).check()


def test_group_norm_opset18_runtime_scale(rng):
    operands = [("x", rand(rng, (2, 6, 3, 4))), ("s", rand(rng, (3,))), ("b", rand(rng, (3,)))]
    Model("GroupNormalization", operands, opset=18, num_groups=3).check()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(rng, dtype, size):
    x = rand(rng, (2, 7, 3, 4), dtype=dtype)
    Model("LRN", [("x", x)], opset=13, size=size, alpha=1e-2, beta=0.6, bias=1.5).check()


def test_lrn_even_size_follows_the_spec(rng):
    # onnxruntime only takes odd sizes; ONNX: channels c - floor((size-1)/2) .. c + ceil((size-1)/2).
    x = rand(rng, (1, 5, 2, 3))
    (y,) = Model("LRN", [("x", x)], opset=13, size=4, alpha=0.5, beta=0.75, bias=1.0).einfuse()
    sq = np.square(x.astype(np.float64))
    square_sum = np.stack([sq[:, max(0, c - 1) : min(5, c + 3)].sum(axis=1) for c in range(5)], axis=1)
    np.testing.assert_allclose(y, x / (1.0 + 0.5 / 4 * square_sum) ** 0.75, rtol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization(rng, dtype, p, axis):
    x = rand(rng, (3, 4, 5), dtype=dtype)
    x[0, 0, :] = 0  # a zero norm along the last axis gives zeros
    Model("LpNormalization", [("x", x)], opset=22, p=p, axis=axis).check()


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [-1, -2]])
def test_mean_variance_normalization(rng, axes):
    attrs = {} if axes is None else {"axes": axes}
    Model("MeanVarianceNormalization", [("x", rand(rng, (2, 3, 4, 5)))], opset=13, **attrs).check(atol=1e-4)


# ---------------------------------------------------------------------------
# softmax family


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2])
def test_softmax_family(rng, dtype, op, axis):
    attrs = {} if axis is None else {"axis": axis}
    x = rand(rng, (2, 3, 4), dtype=dtype, lo=-5, hi=5)
    Model(op, [("x", x)], opset=13, **attrs).check()


def test_hardmax_ties_pick_the_first(rng):
    x = np.array([[1, 3, 3, 2], [0, 0, 0, 0]], dtype=np.float32)
    (y,) = Model("Hardmax", [("x", x)], opset=13).check()
    np.testing.assert_array_equal(y, [[0, 1, 0, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [7, 11])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_softmax_family_coerced_2d(rng, op, opset, axis):
    # Before opset 13 the op runs on x flattened to 2-D at `axis` (default 1).
    attrs = {} if axis is None else {"axis": axis}
    x = rand(rng, (2, 3, 4), lo=-5, hi=5)
    Model(op, [("x", x)], opset=opset, **attrs).check()


def test_softmax_opset11_symbolic_tail(rng):
    x = rand(rng, (2, 3, 4))
    m = Model("Softmax", [("x", x)], opset=11, input_shapes={"x": ["B", "S", 4]})
    got, want = m.einfuse(), m.ort()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    m = Model("Softmax", [("x", x)], opset=11, input_shapes={"x": [2, "S", "T"]})
    with pytest.raises(UnsupportedOpError, match="at most one symbolic dim"):
        m.graph()


FLAG_CASES = [
    # (ONNX op, operands, other attributes, flags as ONNX writes them)
    ("Gemm", [("a", np.ones((4, 3), np.float32)), ("b", np.ones((5, 4), np.float32))], {}, {"transA": 1, "transB": 1}),
    ("MaxPool", [("x", np.ones((1, 2, 6, 6), np.float32))], {"kernel_shape": [3, 3]}, {"ceil_mode": 1}),
    (
        "AveragePool",
        [("x", np.ones((1, 2, 6, 6), np.float32))],
        {"kernel_shape": [3, 3]},
        {"ceil_mode": 1, "count_include_pad": 1},
    ),
    ("LpPool", [("x", np.ones((1, 2, 6, 6), np.float32))], {"kernel_shape": [3, 3]}, {"ceil_mode": 1}),
]


@pytest.mark.parametrize("op, operands, attrs, flags", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flags_are_bool_attributes(op, operands, attrs, flags):
    assert_bool_flags(Model(op, operands, **attrs, **flags), flags)


# ---------------------------------------------------------------------------
# symbolic shape inference

B, H, W = sym("B"), sym("H"), sym("W")


def _out_shape(model: Model):
    return model.graph().outputs[0].shape


def test_conv_symbolic_shapes(rng):
    w = rand(rng, (64, 3, 7, 7))
    m = Model(
        "Conv",
        [("x", rand(rng, (1, 3, 8, 8))), ("@w", w)],
        input_shapes={"x": ["B", 3, "H", "W"]},
        strides=[2, 2],
        pads=[3, 3, 3, 3],
    )
    shape = _out_shape(m)
    assert shape[:2] == (B, 64)
    assert sympy.simplify(shape[2] - (sympy.floor((H - 1) / 2) + 1)) == 0
    assert sympy.simplify(shape[3] - (sympy.floor((W - 1) / 2) + 1)) == 0
    # The inferred expressions evaluate to what the reference (and ORT) produce.
    x = rand(rng, (2, 3, 9, 12))
    (y,) = m.einfuse({"x": x})
    assert y.shape == tuple(int(d.subs({H: 9, W: 12})) if not isinstance(d, int) else d for d in (2, 64, *shape[2:]))
    np.testing.assert_allclose(y, m.ort({"x": x})[0], rtol=1e-4, atol=1e-4)


def test_conv_same_pads_with_symbolic_dims(rng):
    w = rand(rng, (4, 3, 3, 3))
    # Stride 1: the SAME padding does not depend on the input size.
    m = Model(
        "Conv",
        [("x", rand(rng, (1, 3, 5, 5))), ("@w", w)],
        input_shapes={"x": ["B", 3, "H", "W"]},
        auto_pad="SAME_UPPER",
    )
    assert _out_shape(m) == (B, 4, H, W)
    # Stride 2 on a symbolic size: the padding depends on H mod 2, refused cleanly.
    m = Model(
        "Conv",
        [("x", rand(rng, (1, 3, 5, 5))), ("@w", w)],
        input_shapes={"x": ["B", 3, "H", "W"]},
        auto_pad="SAME_UPPER",
        strides=[2, 2],
    )
    with pytest.raises(UnsupportedOpError, match="static spatial dims"):
        m.graph()


def test_pool_and_conv_transpose_symbolic_shapes(rng):
    m = Model(
        "MaxPool",
        [("x", rand(rng, (1, 3, 8, 8)))],
        input_shapes={"x": ["B", 3, "H", "W"]},
        kernel_shape=[2, 2],
        strides=[2, 2],
        ceil_mode=1,
    )
    shape = _out_shape(m)
    for h in range(2, 12):  # the symbolic ceil-mode size agrees with onnxruntime for every H
        x = rand(rng, (1, 3, h, 5))
        want = m.ort({"x": x})[0].shape[2]
        assert int(shape[2].subs(H, h)) == want
        assert m.einfuse({"x": x})[0].shape[2] == want
    m = Model(
        "ConvTranspose",
        [("x", rand(rng, (1, 3, 4, 4))), ("@w", rand(rng, (3, 2, 3, 3)))],
        input_shapes={"x": ["B", 3, "H", "W"]},
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 0],
    )
    assert _out_shape(m) == (B, 2, 2 * H, 2 * W - 1)
    m = Model("GlobalAveragePool", [("x", rand(rng, (1, 3, 4, 4)))], input_shapes={"x": ["B", 3, "H", "W"]})
    assert _out_shape(m) == (B, 3, 1, 1)


def test_matmul_symbolic_broadcast(rng):
    m = Model(
        "MatMul",
        [("a", rand(rng, (2, 1, 3, 4))), ("b", rand(rng, (5, 4, 6)))],
        input_shapes={"a": ["B", 1, "S", 4], "b": [5, 4, 6]},
    )
    assert _out_shape(m) == (B, 5, sym("S"), 6)
    m = Model("MatMul", [("a", rand(rng, (4,))), ("b", rand(rng, (2, 4, 6)))], input_shapes={"b": ["B", 4, 6]})
    assert _out_shape(m) == (B, 6)


def test_layer_norm_stats_symbolic(rng):
    m = Model(
        "LayerNormalization",
        [("x", rand(rng, (2, 3, 8))), ("@s", rand(rng, (8,)))],
        opset=17,
        outputs=3,
        input_shapes={"x": ["B", "S", 8]},
    )
    g = m.graph()
    assert [v.type.shape for v in g.outputs] == [(B, sym("S"), 8), (B, sym("S"), 1), (B, sym("S"), 1)]
    assert g.outputs[1].dtype == DType.f32


# ---------------------------------------------------------------------------
# errors


def test_conv_wrong_channels_names_the_node(rng):
    m = Model("Conv", [("x", rand(rng, (1, 4, 5, 5))), ("@w", rand(rng, (2, 3, 3, 3)))])
    with pytest.raises(ShapeError, match=r"Conv node 'n0'.*4 channels.*expects 3"):
        m.graph()


@pytest.mark.parametrize(
    "model,error,match",
    [
        (lambda r: Model("MatMul", [("a", rand(r, (3, 4))), ("b", rand(r, (5, 6)))]), ShapeError, "contracted dims"),
        (
            lambda r: Model(
                "Gemm", [("a", rand(r, (3, 4))), ("b", rand(r, (4, 5))), ("@c", rand(r, (2, 5)))], opset=13
            ),
            ShapeError,
            "does not broadcast",
        ),
        (lambda r: Model("Conv", [("x", rand(r, (1, 4, 5))), ("@w", rand(r, (2, 4, 3, 3)))]), ShapeError, "rank"),
        (
            lambda r: Model("Conv", [("x", rand(r, (1, 4, 2, 2))), ("@w", rand(r, (2, 4, 3, 3)))]),
            ShapeError,
            "spatial size",
        ),
        (
            lambda r: Model("Conv", [("x", rand(r, (1, 4, 5, 5))), ("@w", rand(r, (3, 2, 3, 3)))], group=2),
            ShapeError,
            "not a multiple of group",
        ),
        (lambda r: Model("MaxPool", [("x", rand(r, (1, 2, 5, 5)))]), ShapeError, "kernel_shape"),
        (
            lambda r: Model("MaxPool", [("x", rand(r, (1, 2, 5, 5)))], kernel_shape=[2, 2], strides=[1]),
            ShapeError,
            "strides",
        ),
        (lambda r: Model("Softmax", [("x", rand(r, (2, 3)))], opset=13, axis=2), ShapeError, "out of range"),
        (
            lambda r: Model("Einsum", [("a", rand(r, (3, 4))), ("b", rand(r, (5, 6)))], opset=12, equation="ij,jk->ik"),
            ShapeError,
            "letter 'j'",
        ),
        (
            lambda r: Model(
                "BatchNormalization",
                [("x", rand(r, (2, 3, 4)))] + [(f"@{n}", rand(r, (3,))) for n in "sbmv"],
                opset=15,
                training_mode=1,
                outputs=3,
            ),
            UnsupportedOpError,
            "training_mode",
        ),
        (
            lambda r: Model(
                "GroupNormalization",
                [("x", rand(r, (2, 6, 4))), ("@s", rand(r, (6,))), ("@b", rand(r, (6,)))],
                opset=21,
                num_groups=4,
            ),
            ShapeError,
            "num_groups",
        ),
    ],
)
def test_clean_errors(rng, model, error, match):
    with pytest.raises(error, match=match):
        model(rng).graph()


def test_converter_writes_the_canonical_form(rng):
    g = Model("Conv", [("x", rand(rng, (1, 3, 6, 6))), ("@w", rand(rng, (4, 3, 3, 3)))]).graph()
    assert dict(g.nodes[0].attrs) == {
        "kernel_shape": (3, 3),
        "strides": (1, 1),
        "pads": (0, 0, 0, 0),
        "dilations": (1, 1),
        "group": 1,
    }
    g = Model("Softmax", [("x", rand(rng, (2, 3)))], opset=13).graph()
    assert g.nodes[0].attrs["axis"] == 1
    g = Model("Einsum", [("x", rand(rng, (2, 3)))], opset=12, equation=" ij -> ji").graph()
    assert g.nodes[0].attrs["equation"] == "ij->ji"
    g = Model("Einsum", [("x", rand(rng, (2, 3))), ("y", rand(rng, (3, 2)))], opset=12, equation="ba,aB").graph()
    assert g.nodes[0].attrs["equation"] == "ba,aB->Bb"  # implicit output: letters used once, ASCII order


def test_ir_defaults_match_the_explicit_form(rng):
    # Ops built by passes may leave window attributes empty: ones / zeros / from the weight.
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.ops.nn import window_params
    from einfuse.ir.types import TensorType

    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 7, 7), DType.f32))
    w = g.add_constant("w", rand(rng, (4, 3, 3, 3)))
    b = Builder(g)
    implicit = b.op("conv", [x, w], strides=(2, 2))
    explicit = b.op("conv", [x, w], kernel_shape=(3, 3), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1))
    pooled = b.op("max_pool", [x], kernel_shape=(2, 2))
    g.outputs += [implicit, explicit, pooled]
    assert implicit.type == explicit.type
    assert pooled.shape == (1, 3, 6, 6)
    out = list(reference.run(g, {"x": rand(rng, (1, 3, 7, 7))}).values())
    np.testing.assert_array_equal(out[0], out[1])
    assert window_params({"strides": (2, 2)}, 2, (3, 3)) == ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1))


def test_reference_dtypes_match_inference(rng):
    # References must not promote: f16 stays f16 and 1-D @ 1-D is a 0-d array, not a scalar.
    for dtype in (np.float16, np.float32):
        a = rand(rng, (4,), dtype=dtype)
        y = get_op("matmul").reference(a, a)
        assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == ()


# ---------------------------------------------------------------------------
# ONNX conformance cases

NN_OPS = {
    "MatMul", "Gemm", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "LRN", "Softmax", "LogSoftmax", "Hardmax", "Einsum", "LpNormalization",
    "MeanVarianceNormalization",
}  # fmt: skip

# Cases einfuse refuses on purpose, with the reason; they must raise an EinfuseError.
UNSUPPORTED = {
    "test_batchnorm_example_training_mode": "training mode",
    "test_batchnorm_epsilon_training_mode": "training mode",
}


CASES = conformance_cases(NN_OPS)


def test_conformance_cases_are_collected():
    names = set(case_ids(CASES))
    assert len(names) > 140
    assert set(UNSUPPORTED) <= names
    assert {"test_conv_with_autopad_same", "test_maxpool_with_argmax_2d_precomputed_pads", "test_einsum_sum"} <= names


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_onnx_conformance(case):
    check_conformance_case(case, refused=UNSUPPORTED)
